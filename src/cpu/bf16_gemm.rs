//! Products of bfloat16 matrices accumulated in f32, the arithmetic of torch's bf16
//! `matmul`/`addmm` on the CPU: `S = A B` with bf16 A and B and an f32 result, which the
//! caller combines and rounds once (torch's `addmm` applies its f32 `alpha`/`beta` to the
//! f32 product before rounding to bf16).
//!
//! On CPUs with AVX-512 BF16 the product runs on `vdpbf16ps` through the GEMM crate
//! `gemmkit` (its f32-output bf16 dot kernel, driven directly: gemmkit's own bf16 entry
//! rounds its output to bf16 and takes bf16 coefficients, which would round torch's f32
//! coefficients); elsewhere (or below the AVX-512 SIMD level) on `matrixmultiply`'s f32 GEMM
//! over the exactly widened values.
//! Both accumulate in f32 (a product of two bf16 values is exact in f32); they sum in
//! different orders, so their last bits differ, as torch's differ between CPUs.

use half::bf16;

/// How the products of one call are spread over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    /// On the calling thread (the caller is already parallel over matrices).
    One,
    /// Over rayon's pool.
    All,
}

/// Scratch of [`Bf16Gemm::product`]: the GEMM crate's packing buffers and, on the widening
/// path, the f32 copies of the operands. Grown to the largest call, then reused.
#[derive(Default)]
pub(crate) struct Bf16Gemm {
    #[cfg(target_arch = "x86_64")]
    packing: gemmkit::Workspace,
    wide_a: Vec<f32>,
    wide_b: Vec<f32>,
}

impl Clone for Bf16Gemm {
    /// A fresh scratch (nothing in it is state).
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Bf16Gemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bf16Gemm")
            .field("wide_a", &self.wide_a.len())
            .field("wide_b", &self.wide_b.len())
            .finish()
    }
}

/// Whether the products run on the `vdpbf16ps` kernel: the CPU has AVX-512F and AVX-512
/// BF16 and the fast path's SIMD level is AVX-512 (`crate::simd::set_simd_level` or
/// `FUSED_OPTIM_CPU_SIMD=avx2` select the widening path; unlike the elementwise loops, the two
/// paths differ in their last bits: summation order).
pub(crate) fn has_bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::simd_level() == crate::simd::SimdLevel::Avx512
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A bf16 matrix operand: element (i, j) at `data[i * rs + j * cs]` (strides >= 0).
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub data: &'a [bf16],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Operand<'a> {
    /// A row-major matrix with rows `ld` elements apart.
    pub fn rows(data: &'a [bf16], ld: usize) -> Self {
        Self {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with rows `ld` elements apart.
    pub fn transposed(data: &'a [bf16], ld: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// Whether a `rows` x `cols` matrix fits in the slice.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

impl Bf16Gemm {
    /// `S = A B` for `A` (`m` x `k`) and `B` (`k` x `n`), every product exact and summed in
    /// f32, into the `m` x `n` block of `s` whose rows are `ldc` elements apart.
    ///
    /// # Panics
    /// When an operand or `s` is shorter than its matrix, `ldc < n`, or a dimension is 0
    /// (internal callers only).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn product(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: Operand<'_>,
        b: Operand<'_>,
        s: &mut [f32],
        ldc: usize,
        threads: Threads,
    ) {
        assert!(m > 0 && k > 0 && n > 0 && ldc >= n);
        assert!(a.holds(m, k) && b.holds(k, n) && s.len() >= (m - 1) * ldc + n);
        if has_bf16_dot() {
            self.dot(m, k, n, a, b, s, ldc, threads);
        } else {
            self.widened(m, k, n, a, b, s, ldc);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dot(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: Operand<'_>,
        b: Operand<'_>,
        s: &mut [f32],
        ldc: usize,
        threads: Threads,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            use gemmkit::kernel::Bf16DotGemmF32;
            use gemmkit::simd::Avx512Bf16;
            let par = match threads {
                Threads::One => gemmkit::Parallelism::Serial,
                Threads::All => gemmkit::Parallelism::Rayon(0),
            };
            // gemmkit's driver wants a column-major-ish C: run the transposed problem
            // Sᵀ (n x m, column-major = S row-major) = Bᵀ Aᵀ, swapping each operand's strides.
            // The geometry (2 x 12 register tile) is the one gemmkit's own bf16 dispatch uses
            // with this kernel.
            // SAFETY: the CPU has AVX-512F and AVX-512 BF16 (`has_bf16_dot`, checked by the
            // caller); the slices hold the matrices the strides describe (asserted in
            // `product`); `s` does not alias `a` or `b` (distinct borrows); m, n, k > 0 and
            // alpha = 1 != 0, the driver's preconditions.
            unsafe {
                gemmkit::driver::run::<Bf16DotGemmF32, Avx512Bf16, 2, 12>(
                    Avx512Bf16,
                    n,
                    k,
                    m,
                    1.0,
                    b.data.as_ptr(),
                    b.cs as isize,
                    b.rs as isize,
                    a.data.as_ptr(),
                    a.cs as isize,
                    a.rs as isize,
                    0.0,
                    s.as_mut_ptr(),
                    1,
                    ldc as isize,
                    par,
                    &mut self.packing,
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = threads;
            self.widened(m, k, n, a, b, s, ldc);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn widened(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: Operand<'_>,
        b: Operand<'_>,
        s: &mut [f32],
        ldc: usize,
    ) {
        // Compact row-major f32 copies (exact: every bf16 value is an f32 value).
        for (v, op, rows, cols) in [(&mut self.wide_a, a, m, k), (&mut self.wide_b, b, k, n)] {
            v.clear();
            v.extend(
                (0..rows)
                    .flat_map(|i| (0..cols).map(move |j| i * op.rs + j * op.cs))
                    .map(|at| op.data[at].to_f32()),
            );
        }
        // SAFETY: the copies hold the m x k and k x n row-major matrices, `s` holds the
        // m x n block with rows `ldc` apart (asserted in `product`) and aliases neither.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                self.wide_a.as_ptr(),
                k as isize,
                1,
                self.wide_b.as_ptr(),
                n as isize,
                1,
                0.0,
                s.as_mut_ptr(),
                ldc as isize,
                1,
            );
        }
    }
}
