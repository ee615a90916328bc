// Fused elementwise kernels around the GEMMs: the CUDA side of elementwise.py.
//
// Templates over the float type T and the index type I (see conv.cu). The arithmetic follows
// the Numba kernels' type promotion so that float32 results agree with the CPU to rounding:
// there, a float64 literal or the float64 `eps` turns an expression into float64 (f'(z), the
// stabilized division, the `acc = 0.0` accumulators), and the result is rounded once on store.
//
// Codes: activation 0 identity, 1 ReLU, 2 tanh, 3 sigmoid; mask 0 none, 1 z > 0, 2 z < 0;
// input modifier 0 x, 1 max(x, 0), 2 min(x, 0), 3 ones, 4 low, 5 high.

#define GRID_STRIDE(t, total) \
    for (I t = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; t < (total); t += (I)blockDim.x * (I)gridDim.x)

__device__ __forceinline__ float tanh_t(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_t(double x) { return tanh(x); }
__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ double act_f(T z, int act)
{
    // f(z); tanh and exp in T precision, as math.tanh/math.exp on a float32 in Numba
    if (act == 1) return z > T(0) ? (double)z : 0.0 * (double)z;
    if (act == 2) return (double)tanh_t(z);
    if (act == 3) {
        if (z >= T(0)) return 1.0 / (1.0 + (double)exp_t(-z));
        const T e = exp_t(z);
        return (double)e / (1.0 + (double)e);
    }
    return (double)z;
}

template <typename T>
__device__ __forceinline__ double act_df(T z, T a, int act)
{
    // f'(z) from the stored input z (ReLU) or output a (tanh, sigmoid)
    if (act == 1) return z > T(0) ? 1.0 : 0.0;
    if (act == 2) return 1.0 - (double)(a * a);
    if (act == 3) return (double)a * (1.0 - (double)a);
    return 1.0;
}

template <typename T>
__device__ __forceinline__ double stab_div(T r, T den, double eps)
{
    // r / (den + eps * sign(den)), sign(0) = +1; eps == 0: 0 where den == 0 (LRP-0)
    if (eps == 0.0) return den == T(0) ? 0.0 * (double)r : (double)(r / den);
    return (double)r / (den >= T(0) ? (double)den + eps : (double)den - eps);
}

template <typename T, typename I>
__global__ void bias_act_from_gemm(const T* zg, I ldz, const T* bias, int act, I n_, I o_, I p_,
                                   T* a_out, T* z_out, int store_z)
{
    // z[n, o, p] = zg[o, n*P + p] + b[o];  a = f(z)
    const I total = n_ * o_ * p_;
    GRID_STRIDE(t, total) {
        const I p = t % p_;
        const I o = (t / p_) % o_;
        const I n = t / (p_ * o_);
        const T z = zg[o * ldz + n * p_ + p] + bias[o];
        if (store_z) z_out[t] = z;
        a_out[t] = (T)act_f(z, act);
    }
}

template <typename T, typename I>
__global__ void bias_act_rows(T* z, const T* bias, int act, I n_, I o_, T* a_out, int store_z)
{
    // z[n, o] += b[o] (kept when store_z);  a = f(z)
    const I total = n_ * o_;
    GRID_STRIDE(t, total) {
        const T v = z[t] + bias[t % o_];
        if (store_z) z[t] = v;
        a_out[t] = (T)act_f(v, act);
    }
}

template <typename T, typename I>
__global__ void act_backward(const T* g, const T* z, const T* a, int act, I n_, T* out)
{
    // out = g * f'(z)
    GRID_STRIDE(t, n_) {
        out[t] = (T)((double)g[t] * act_df(z[t], a[t], act));
    }
}

template <typename T, typename I>
__global__ void act_rescale_backward(const T* g, const T* z, const T* z0, const T* a, const T* a0,
                                     int act, double eps, I n_, T* out)
{
    // out = g * (a - a0) / (z - z0), or g * f'(z) where |z - z0| < eps
    GRID_STRIDE(t, n_) {
        const T dz = z[t] - z0[t];
        if (fabs((double)dz) < eps) {
            out[t] = (T)((double)g[t] * act_df(z[t], a[t], act));
        } else {
            out[t] = g[t] * ((a[t] - a0[t]) / dz);
        }
    }
}

template <typename T, typename I>
__global__ void lrp_ratio(const T* zg, I ldz, const T* zp, int zmode, const T* cz, const T* cp,
                          const T* bvec, const T* bias_g, const T* zorig, const T* r, const T* coefs,
                          const long long* masks, double eps, I n_, I g_, I o_, I p_, T* s)
{
    // s[n, g*O + o, p] = coefs[g] * mask_g(zorig) * r[n, o, p] / stab(den_g[n, o, p]),
    // den by zmode: 0 zorig + bias_g; 1 zg[k, m] + bias_g; 2 cz (zorig - b) + cp zg[o, m] + bias_g;
    // 3 cz (zorig - b) + cp zp[n, o, p] + bias_g; 4 zp[n, k, p] + bias_g   (k = g*O + o, m = n*P + p)
    const I go = g_ * o_;
    const I total = n_ * go * p_;
    GRID_STRIDE(t, total) {
        const I p = t % p_;
        const I k = (t / p_) % go;
        const I n = t / (p_ * go);
        const I g = k / o_;
        const I o = k - g * o_;
        const I u = (n * o_ + o) * p_ + p;  // (n, o, p) in the (N, O, P) arrays
        const long long mk = masks[g];
        const T zo = zorig[u];
        if ((mk == 1 && !(zo > T(0))) || (mk == 2 && !(zo < T(0)))) {
            s[t] = T(0);
            continue;
        }
        const T bg = bias_g[k];
        T den;
        if (zmode == 0) {
            den = zo + bg;
        } else if (zmode == 1) {
            den = zg[k * ldz + n * p_ + p] + bg;
        } else if (zmode == 2) {
            den = cz[g] * (zo - bvec[o]) + cp[g] * zg[o * ldz + n * p_ + p] + bg;
        } else if (zmode == 3) {
            den = cz[g] * (zo - bvec[o]) + cp[g] * zp[u] + bg;
        } else {  // 4: zp is B a from the forward pass, laid out like s
            den = zp[t] + bg;
        }
        s[t] = (T)((double)coefs[g] * stab_div(r[u], den, eps));
    }
}

template <typename T, typename I>
__global__ void lrp_ratio_rows(const T* zg, I ldz, int zmode, const T* cz, const T* cp, const T* bvec,
                               const T* bias_g, const T* zorig, const T* r, const T* coefs,
                               const long long* masks, double eps, I n_, I g_, I o_, T* s)
{
    // lrp_ratio for Dense layers: zg (N, G*O) (zmode 1) or (N, O) (zmode 2), zorig/r (N, O),
    // s (N, G*O); the CPU kernel's two code paths (and their roundings) are kept apart.
    const I go = g_ * o_;
    const I total = n_ * go;
    GRID_STRIDE(t, total) {
        const I k = t % go;
        const I n = t / go;
        const I g = k / o_;
        const I o = k - g * o_;
        const long long mk = masks[g];
        const T cf = coefs[g];
        const T zo = zorig[n * o_ + o];
        if (zmode == 0 && mk == 0 && eps > 0.0) {  // the CPU's vectorized epsilon loop: (cf r) / stab
            const T den = zo + bias_g[k];
            s[t] = (T)((double)(cf * r[n * o_ + o]) / (den >= T(0) ? (double)den + eps : (double)den - eps));
            continue;
        }
        T den;
        if (zmode == 0) {
            den = zo + bias_g[k];
        } else if (zmode == 1) {
            den = zg[n * ldz + k] + bias_g[k];
        } else {
            den = cz[g] * (zo - bvec[o]) + cp[g] * zg[n * ldz + o] + bias_g[k];
        }
        const double v = (double)cf * stab_div(r[n * o_ + o], den, eps);
        const bool keep = mk == 0 || (mk == 1 && zo > T(0)) || (mk == 2 && zo < T(0));
        s[t] = (T)(keep ? v : 0.0 * v);
    }
}

template <typename T, typename I>
__global__ void combine_from_gemm(const T* cg, I ldc, const T* xs, I xc, int mods, I n_, I c_, I p_, T* out)
{
    // out[n, c, p] = cg[c, n*P + p]                                          mods == 0
    // out[n, c, p] = sum_m xs[n, m*C + c, p] * cg[m*C + c, n*P + p]           mods > 0
    // (ldc: row length of cg; xc: channel count of xs)
    const I total = n_ * c_ * p_;
    GRID_STRIDE(t, total) {
        const I p = t % p_;
        const I c = (t / p_) % c_;
        const I n = t / (p_ * c_);
        const I m = n * p_ + p;
        if (mods == 0) {
            out[t] = cg[c * ldc + m];
        } else {
            double acc = 0.0;
            for (int mi = 0; mi < mods; ++mi) {
                const I cc = mi * c_ + c;
                acc += (double)(xs[(n * xc + cc) * p_ + p] * cg[cc * ldc + m]);
            }
            out[t] = (T)acc;
        }
    }
}

template <typename T, typename I>
__global__ void grad_to_rows(const T* g, const T* z, const T* a, int act, I n_, I o_, I p_, T* s, I lds)
{
    // s[o, n*P + p] = g[n, o, p] * f'(z[n, o, p])   (act 0: a plain transpose); one thread per
    // element of s, so the writes are coalesced
    const I m_ = n_ * p_;
    const I total = o_ * m_;
    GRID_STRIDE(t, total) {
        const I o = t / m_;
        const I m = t - o * m_;
        const I n = m / p_;
        const I p = m - n * p_;
        const I u = (n * o_ + o) * p_ + p;
        if (act == 0) {
            s[o * lds + m] = g[u];
        } else {
            s[o * lds + m] = (T)((double)g[u] * act_df(z[u], a[u], act));
        }
    }
}

template <typename T, typename I>
__global__ void stacked_mul_sum(const T* xs, I ldx, const T* c, I ldc, int mods, I n_, I f_, T* out)
{
    // out[n, f] = sum_m xs[n, m*F + f] * c[n, m*F + f]
    const I total = n_ * f_;
    GRID_STRIDE(t, total) {
        const I f = t % f_;
        const I n = t / f_;
        if (mods == 1) {
            out[t] = xs[n * ldx + f] * c[n * ldc + f];
        } else {
            double acc = 0.0;
            for (int m = 0; m < mods; ++m) {
                acc += (double)(xs[n * ldx + m * f_ + f] * c[n * ldc + m * f_ + f]);
            }
            out[t] = (T)acc;
        }
    }
}

template <typename T, typename I>
__global__ void stack_input_mods(const T* x, const long long* modes, I n_modes, const T* low, const T* high,
                                 I n_, I f_, T* out, I ldo)
{
    // out[n, m*F + f] = modifier_m(x)[n, f]; low/high (N, F) read only for modes 4 and 5
    const I total = n_ * n_modes * f_;
    GRID_STRIDE(t, total) {
        const I f = t % f_;
        const I mi = (t / f_) % n_modes;
        const I n = t / (f_ * n_modes);
        const long long md = modes[mi];
        const I u = n * f_ + f;
        const T v = x[u];
        double w = (double)v;
        if (md == 1) {
            w = v > T(0) ? (double)v : 0.0 * (double)v;
        } else if (md == 2) {
            w = v < T(0) ? (double)v : 0.0 * (double)v;
        } else if (md == 3) {
            w = 1.0;
        } else if (md == 4) {
            w = (double)low[u];
        } else if (md == 5) {
            w = (double)high[u];
        }
        out[n * ldo + mi * f_ + f] = (T)w;
    }
}

template <typename T, typename I>
__global__ void any_negative(const T* x, I n_, int* flag)
{
    // *flag = 1 when some x[i] < 0 (the caller zeroes it; every writer writes the same value)
    GRID_STRIDE(t, n_) {
        if (x[t] < T(0)) *flag = 1;
    }
}
