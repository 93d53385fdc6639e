//! Black-box tests of proglog.
