# shellcheck shell=bash
# Helpers shared by setup.sh and nested.sh (sourced, not executed).

# bed_find_kernel: print the newest installed Debian 6.1 kernel image
# (/boot/vmlinuz-6.1.0-N-amd64) whose modules are installed; the L1 VM needs
# kvm-amd from /lib/modules/VERSION. MICROVM_BED_KERNEL overrides.
bed_find_kernel() {
	if [[ -n ${MICROVM_BED_KERNEL:-} ]]; then
		printf '%s\n' "$MICROVM_BED_KERNEL"
		return 0
	fi
	local img ver best=''
	# shellcheck disable=SC2046 # image names have no spaces
	for img in $(printf '%s\n' /boot/vmlinuz-6.1.0-*-amd64 | sort -V); do
		ver=${img#/boot/vmlinuz-}
		[[ -f /lib/modules/$ver/modules.dep ]] && best=$img
	done
	[[ -n $best ]] || return 1
	printf '%s\n' "$best"
}

# bed_find_vng: print the absolute path of the real `vng` script (not a pyenv
# shim). vng runs its helper `virtme-run` through PATH, so callers put the
# directory of this path first on PATH when they run it.
bed_find_vng() {
	local py dir seen=" "
	for py in python3 /usr/bin/python3 /usr/local/bin/python3; do
		py=$(command -v "$py" 2>/dev/null) || continue
		[[ $seen == *" $py "* ]] && continue
		seen+="$py "
		# Every scripts directory pip may have used for this interpreter.
		for dir in $("$py" - 2>/dev/null <<-'EOF'
			import os, sys, sysconfig
			import virtme_ng  # fails when virtme-ng is not installed for this python
			dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
			for scheme in ("posix_user", "posix_local", "posix_prefix"):
			    try:
			        dirs.append(sysconfig.get_path("scripts", scheme))
			    except KeyError:
			        pass
			print("\n".join(dirs))
			EOF
		); do
			if [[ -x $dir/vng && -x $dir/virtme-run ]]; then
				printf '%s\n' "$dir/vng"
				return 0
			fi
		done
	done
	# Last resort: whatever is on PATH (resolving a pyenv shim to its target).
	py=$(command -v vng 2>/dev/null) || return 1
	if [[ $py == */shims/vng ]] && command -v pyenv >/dev/null 2>&1; then
		py=$(pyenv which vng 2>/dev/null) || return 1
	fi
	printf '%s\n' "$py"
}
