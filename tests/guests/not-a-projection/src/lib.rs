//! A component that exports a function of its own and nothing of the projection world.

/// Adds two numbers.
#[unsafe(no_mangle)]
pub extern "C" fn add(a: i32, b: i32) -> i32 {
    a.wrapping_add(b)
}
