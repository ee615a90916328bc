// 2-D max and average pooling, forward and backward (NCHW): the CUDA side of pool.py.
//
// Templates over the float type T and the index type I (see conv.cu). Max-pool winners `idx`
// are long long (the flat h*W + w position in the sample's channel plane). The max-pool
// backward kernels do not know the window geometry (the CPU signature has none), so they
// scatter with atomicAdd onto a zeroed `out`: exact when windows do not overlap (each pixel
// then receives at most one window's value), rounding-order dependent where they do.

#define GRID_STRIDE(t, total) \
    for (I t = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; t < (total); t += (I)blockDim.x * (I)gridDim.x)

template <typename T, typename I>
__global__ void maxpool_forward(const T* x, I n_, I c_, I h_, I w_, I kh, I kw, I sh, I sw, I ph, I pw,
                                I ho_, I wo_, T* out, long long* idx)
{
    // out[n, c, ho, wo] = max over the window (padding never wins), idx = h*W + w of the first
    // maximum in row-major window order; a NaN wins over numbers (the first NaN is kept)
    const I total = n_ * c_ * ho_ * wo_;
    GRID_STRIDE(t, total) {
        const I wo = t % wo_;
        const I ho = (t / wo_) % ho_;
        const T* xp = x + (t / (wo_ * ho_)) * h_ * w_;
        I best = -1;
        T bv = xp[0];
        for (I i = 0; i < kh; ++i) {
            const I h = ho * sh - ph + i;
            if (h < 0 || h >= h_) continue;
            for (I j = 0; j < kw; ++j) {
                const I w = wo * sw - pw + j;
                if (w < 0 || w >= w_) continue;
                const T v = xp[h * w_ + w];
                if (best < 0 || v > bv || v != v) {
                    bv = v;
                    best = h * w_ + w;
                }
            }
        }
        out[t] = bv;
        idx[t] = (long long)best;
    }
}

__device__ __forceinline__ long long plane_pos(long long k, long long hw)
{
    // the CPU kernel's out[n, c, k // W, k % W] for k = -1 (a window without a pixel) wraps to
    // the plane's last pixel
    return k < 0 ? k + hw : k;
}

template <typename T, typename I>
__global__ void maxpool_backward(const T* g, const long long* idx, I n_planes, I hw, I howo, T* out)
{
    // out (zeroed by the caller)[n, c, idx[n, c, ho, wo]] += g[n, c, ho, wo]
    const I total = n_planes * howo;
    GRID_STRIDE(t, total) {
        const I plane = t / howo;
        atomicAdd(&out[plane * hw + (I)plane_pos(idx[t], hw)], g[t]);
    }
}

template <typename T, typename I>
__global__ void maxpool_rescale_route(const T* g, const T* y, const T* y0, const long long* idx,
                                      const long long* idx0, I n_planes, I hw, I howo, T* out)
{
    // DeepLIFT max rule, step 1: out (zeroed) += g (max(y, y0) - y0) at the input's winner
    // and g (y - max(y, y0)) at the baseline's winner
    const I total = n_planes * howo;
    GRID_STRIDE(t, total) {
        const I base = (t / howo) * hw;
        const T gv = g[t];
        const T yv = y[t];
        const T y0v = y0[t];
        const T ym = yv > y0v ? yv : y0v;
        atomicAdd(&out[base + (I)plane_pos(idx[t], hw)], gv * (ym - y0v));
        atomicAdd(&out[base + (I)plane_pos(idx0[t], hw)], gv * (yv - ym));
    }
}

template <typename T, typename I>
__global__ void maxpool_rescale_divide(const T* x, const T* x0, double eps, I total, T* out)
{
    // step 2: out /= (x - x0), or 0 where |x - x0| < eps
    GRID_STRIDE(t, total) {
        const T dx = x[t] - x0[t];
        out[t] = fabs((double)dx) >= eps ? out[t] / dx : T(0);
    }
}

template <typename T, typename I>
__global__ void maxpool_rescale_small(const T* g, const T* x, const T* x0, const long long* idx, double eps,
                                      I n_planes, I hw, I howo, T* out)
{
    // step 3: the plain max-pool gradient where the winner's |x - x0| < eps
    const I total = n_planes * howo;
    GRID_STRIDE(t, total) {
        const I k = (t / howo) * hw + (I)plane_pos(idx[t], hw);
        if (fabs((double)(x[k] - x0[k])) < eps) atomicAdd(&out[k], g[t]);
    }
}

template <typename T, typename I>
__global__ void avgpool_forward(const T* x, I n_, I c_, I h_, I w_, I kh, I kw, I sh, I sw, I ph, I pw,
                                I ho_, I wo_, T* out)
{
    // out[n, c, ho, wo] = sum over the window / (kh*kw), zero padding counted
    const I total = n_ * c_ * ho_ * wo_;
    const double inv = 1.0 / (double)(kh * kw);
    GRID_STRIDE(t, total) {
        const I wo = t % wo_;
        const I ho = (t / wo_) % ho_;
        const T* xp = x + (t / (wo_ * ho_)) * h_ * w_;
        double acc = 0.0;
        for (I i = 0; i < kh; ++i) {
            const I h = ho * sh - ph + i;
            if (h < 0 || h >= h_) continue;
            for (I j = 0; j < kw; ++j) {
                const I w = wo * sw - pw + j;
                if (w >= 0 && w < w_) acc += (double)xp[h * w_ + w];
            }
        }
        out[t] = (T)(acc * inv);
    }
}

template <typename T, typename I>
__global__ void avgpool_backward(const T* g, I n_, I c_, I h_, I w_, I kh, I kw, I sh, I sw, I ph, I pw,
                                 I ho_, I wo_, const T* x, int mul_x, T* out)
{
    // out[n, c, h, w] = sum over the windows that cover (h, w) of g / (kh*kw), times x when mul_x
    const I total = n_ * c_ * h_ * w_;
    const double inv = 1.0 / (double)(kh * kw);
    GRID_STRIDE(t, total) {
        const I w = t % w_;
        const I h = (t / w_) % h_;
        const T* gp = g + (t / (w_ * h_)) * ho_ * wo_;
        double acc = 0.0;
        for (I i = 0; i < kh; ++i) {
            const I hh = h + ph - i;
            if (hh < 0 || hh % sh != 0) continue;
            const I ho = hh / sh;
            if (ho >= ho_) continue;
            for (I j = 0; j < kw; ++j) {
                const I ww = w + pw - j;
                if (ww < 0 || ww % sw != 0) continue;
                const I wo = ww / sw;
                if (wo < wo_) acc += (double)gp[ho * wo_ + wo];
            }
        }
        const double v = acc * inv;
        out[t] = mul_x ? (T)(v * (double)x[t]) : (T)v;
    }
}
