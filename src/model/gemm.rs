//! The matrix product every layer kind is built on (matrixmultiply's sgemm with explicit
//! strides), and the fixed chunk of samples that parallel work is split into: reductions over
//! samples run in chunk order, so results do not depend on the number of threads.

use matrixmultiply::sgemm;

/// Samples per parallel work item; fixed, so reductions are deterministic.
pub const CHUNK: usize = 8;

/// C = alpha · A·B + beta · C with explicit strides (row stride, column stride).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    debug_assert!(m == 0 || k == 0 || a.len() > (m - 1) * rsa + (k - 1) * csa);
    debug_assert!(k == 0 || n == 0 || b.len() > (k - 1) * rsb + (n - 1) * csb);
    debug_assert!(m == 0 || n == 0 || c.len() > (m - 1) * rsc + (n - 1));
    // SAFETY: the slices cover every index the strides reach (checked above in debug builds,
    // guaranteed by the callers' shapes).
    unsafe {
        sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}
