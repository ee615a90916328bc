// im2col / col2im for 2-D convolutions (NCHW, zero padding): the CUDA side of conv.py.
//
// Every kernel is a template over the float type T (float, double) and the index type I
// (int when every array involved has fewer than 2^30 elements, long long otherwise: 64-bit
// division costs several times a 32-bit one and these kernels are all index arithmetic).
// One thread per output element, grid-stride loops. Sums accumulate in double, as the
// Numba kernels do (their `0.0` accumulator is float64 for float32 inputs too).

#define GRID_STRIDE(t, total) \
    for (I t = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; t < (total); t += (I)blockDim.x * (I)gridDim.x)

template <typename T, typename I>
__global__ void im2col(const T* x, I n_, I c_, I h_, I w_, I kh, I kw, I sh, I sw, I ph, I pw,
                       I ho_, I wo_, T* cols)
{
    // cols[(c*kh + i)*kw + j, n*P + ho*Wo + wo] = x[n, c, ho*sh - ph + i, wo*sw - pw + j]
    const I p_ = ho_ * wo_;
    const I m_ = n_ * p_;
    const I total = c_ * kh * kw * m_;
    GRID_STRIDE(t, total) {
        const I r = t / m_;
        const I col = t - r * m_;
        const I c = r / (kh * kw);
        const I i = (r / kw) % kh;
        const I j = r % kw;
        const I n = col / p_;
        const I p = col - n * p_;
        const I h = (p / wo_) * sh - ph + i;
        const I w = (p % wo_) * sw - pw + j;
        cols[t] = (h >= 0 && h < h_ && w >= 0 && w < w_) ? x[((n * c_ + c) * h_ + h) * w_ + w] : T(0);
    }
}

template <typename T, typename I>
__global__ void col2im_gather(const T* cols, I ldc, I n_, I h_, I w_, I kh, I kw, I sh, I sw,
                              I ph, I pw, I ho_, I wo_, I c_out, int mods, const T* xs, I xc, T* out)
{
    // out[n, c, h, w] = fold(cols)[n, c, h, w]                                    mods == 0
    // out[n, c, h, w] = sum_m xs[n, m*C + c, h, w] * fold(cols)[n, m*C + c, h, w]   mods > 0
    // (ldc: the row length of cols, xc: the channel count of xs; the loops are the CPU kernel's,
    // in the same summation order)
    const I p_ = ho_ * wo_;
    const I total = n_ * c_out * h_ * w_;
    const int nm = mods == 0 ? 1 : mods;
    GRID_STRIDE(t, total) {
        const I w = t % w_;
        const I h = (t / w_) % h_;
        const I c = (t / (w_ * h_)) % c_out;
        const I n = t / (w_ * h_ * c_out);
        double acc = 0.0;
        for (int m = 0; m < nm; ++m) {
            const I cc = c + m * c_out;
            double v = 0.0;
            for (I i = 0; i < kh; ++i) {
                const I hh = h + ph - i;
                if (hh < 0 || hh % sh != 0) continue;
                const I ho = hh / sh;
                if (ho >= ho_) continue;
                for (I j = 0; j < kw; ++j) {
                    const I ww = w + pw - j;
                    if (ww < 0 || ww % sw != 0) continue;
                    const I wo = ww / sw;
                    if (wo >= wo_) continue;
                    v += (double)cols[((cc * kh + i) * kw + j) * ldc + n * p_ + ho * wo_ + wo];
                }
            }
            if (mods == 0) {
                acc = v;
            } else {
                acc += (double)xs[((n * xc + cc) * h_ + h) * w_ + w] * v;
            }
        }
        out[t] = (T)acc;
    }
}
