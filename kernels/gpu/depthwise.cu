// Depthwise convolutions (groups = input = output channels), forward and gradient: the CUDA
// side of depthwise.py.
//
// Templates over the float type T and the index type I (see conv.cu). Direct kernels, one
// thread per output element, no atomics. The sums are in T and run over the taps in the CPU
// kernel's order (row-major over the dense dilated kernel, taps at multiples of the dilation),
// each product rounded to T and added to an accumulator that starts at +0, as the CPU's
// per-tap passes over a zeroed buffer do, so results agree with it to rounding (bit for bit
// with the FMA contraction off, which sources.OPTIONS does, and no subnormals).

#define GRID_STRIDE(t, total) \
    for (I t = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; t < (total); t += (I)blockDim.x * (I)gridDim.x)

template <typename T, typename I>
__global__ void depthwise_conv(const T* x, const T* taps, I n_, I c_, I h_, I w_, I kh, I kw, I sh, I sw,
                               I ph, I pw, I dh, I dw, I ho_, I wo_, T* out)
{
    // out[c, n*Ho*Wo + y*Wo + q] = sum_(i, j) taps[c, i, j] xpad[n, c, y*sh + i, q*sw + j],
    // (i, j) at multiples of (dh, dw); a padded pixel contributes taps * 0, as on the CPU
    const I p_ = ho_ * wo_;
    const I m_ = n_ * p_;
    const I total = c_ * m_;
    GRID_STRIDE(t, total) {
        const I c = t / m_;
        const I col = t - c * m_;
        const I n = col / p_;
        const I p = col - n * p_;
        const I y0 = (p / wo_) * sh - ph;
        const I q0 = (p % wo_) * sw - pw;
        const I plane = (n * c_ + c) * h_;
        T acc = T(0);
        for (I i = 0; i < kh; i += dh) {
            const I hh = y0 + i;
            const bool row_in = hh >= 0 && hh < h_;
            for (I j = 0; j < kw; j += dw) {
                const I ww = q0 + j;
                const T v = (row_in && ww >= 0 && ww < w_) ? x[(plane + hh) * w_ + ww] : T(0);
                acc += taps[(c * kh + i) * kw + j] * v;
            }
        }
        out[t] = acc;
    }
}

template <typename T, typename I>
__global__ void depthwise_conv_grad(const T* g, const T* taps, I n_, I c_, I h_, I w_, I kh, I kw, I sh,
                                    I sw, I ph, I pw, I dh, I dw, I ho_, I wo_, T* gin)
{
    // gin[n, c, h, w] = sum_(i, j) taps[c, i, j] g[n, c, y, q] over the taps whose output
    // (y, q) = ((h + ph - i) / sh, (w + pw - j) / sw) exists (divisible, inside Ho x Wo): the
    // adjoint of depthwise_conv as a gather, in the forward's tap order
    const I total = n_ * c_ * h_ * w_;
    GRID_STRIDE(t, total) {
        const I w = t % w_;
        const I h = (t / w_) % h_;
        const I nc = t / (w_ * h_);  // n * C + c
        const I c = nc % c_;
        const I plane = nc * ho_;
        T acc = T(0);
        for (I i = 0; i < kh; i += dh) {
            const I hh = h + ph - i;
            if (hh < 0 || hh % sh != 0) continue;
            const I y = hh / sh;
            if (y >= ho_) continue;
            for (I j = 0; j < kw; j += dw) {
                const I ww = w + pw - j;
                if (ww < 0 || ww % sw != 0) continue;
                const I q = ww / sw;
                if (q >= wo_) continue;
                acc += taps[(c * kh + i) * kw + j] * g[(plane + y) * wo_ + q];
            }
        }
        gin[t] = acc;
    }
}
