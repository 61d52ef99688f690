pub mod boot;
pub mod check;
pub mod pack;
pub mod run;
