# shellcheck shell=bash
# Helpers shared by setup.sh and nested.sh (sourced, not executed).

# bed_find_kernel: print the L1 kernel image: the newest installed Debian 6.12 image
# (/boot/vmlinuz-6.12.N+deb12-amd64, from bookworm's own archive) whose modules are
# installed, else the newest such 6.1 image (/boot/vmlinuz-6.1.0-N-amd64); the L1 VM needs
# kvm-amd from /lib/modules/VERSION. 6.12 is the default for its steadiness under the
# emulator (README.md, "Choosing the bed's configuration"). MICROVM_BED_KERNEL overrides.
bed_find_kernel() {
	if [[ -n ${MICROVM_BED_KERNEL:-} ]]; then
		printf '%s\n' "$MICROVM_BED_KERNEL"
		return 0
	fi
	local series img ver best
	for series in '6.12.*+deb12' '6.1.0-*'; do
		best=''
		# shellcheck disable=SC2046 # image names have no spaces
		for img in $(printf '%s\n' /boot/vmlinuz-$series-amd64 | sort -V); do
			ver=${img#/boot/vmlinuz-}
			[[ -f /lib/modules/$ver/modules.dep ]] && best=$img
		done
		[[ -n $best ]] && { printf '%s\n' "$best"; return 0; }
	done
	return 1
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

# bed_cpu_report MONITOR_SOCKET KALLSYMS CPUS: where each of L1's vCPUs is, twice a second
# apart, from QEMU's monitor: RIP (named from L1's text symbols, modules included, which L1
# copied from /proc/kallsyms at its start; an address in no L1 function is most likely L2's),
# CR3, and whether the vCPU is halted. For a frozen L1: the same RIP twice and HLT=1 is an idle CPU waiting for an
# interrupt that never comes; a moving RIP is a loop.
bed_cpu_report() {
	local sock=$1 map=$2 cpus=$3 round i out rip
	[[ -S $sock ]] || return 0
	echo "nested.sh: L1's vCPUs, from QEMU's monitor:"
	for round in 1 2; do
		for ((i = 0; i < cpus; i++)); do
			out=$(python3 - "$sock" "$i" <<-'PY' 2>&1
				import socket, sys, time
				s = socket.socket(socket.AF_UNIX)
				s.settimeout(5)
				s.connect(sys.argv[1])
				s.sendall(f"cpu {sys.argv[2]}\ninfo registers\n".encode())
				time.sleep(1)
				data = b""
				try:
				    while chunk := s.recv(65536):
				        data += chunk
				except OSError:
				    pass
				print(data.decode(errors="replace"))
				PY
			)
			rip=$(grep -o 'RIP=[0-9a-f]*' <<<"$out" | head -n 1 | cut -d= -f2)
			printf '  round %d vCPU %d: RIP=%s (%s) %s %s\n' "$round" "$i" "${rip:-?}" \
				"$(bed_symbol "$map" "$rip")" "$(grep -o 'CR3=[0-9a-f]*' <<<"$out" | head -n 1)" \
				"$(grep -o 'HLT=[01]' <<<"$out" | head -n 1)"
		done
	done
}

# bed_symbol KALLSYMS HEXADDR: the function holding the address, as name+offset [module].
bed_symbol() {
	[[ -f $1 && -n $2 ]] || { echo '?'; return; }
	python3 - "$1" "$2" <<-'PY'
		import sys
		target, best = int(sys.argv[2], 16), None
		for line in open(sys.argv[1]):
		    addr, kind, name = line.split(maxsplit=2)
		    if kind in "tTwW" and int(addr, 16) <= target and (best is None or int(addr, 16) >= best[0]):
		        best = (int(addr, 16), name.strip())
		print(f"{best[1]}+{target - best[0]:#x}" if best and target - best[0] < 65536 else "not in L1")
		PY
}
