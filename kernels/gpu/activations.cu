// The activations without a fused-epilogue code: the CUDA side of activations.py.
//
// Templates over the float type T and the index type I (see conv.cu). Each value is computed
// in double and rounded once to T, from the same formulas, in the same operation order, as
// relprop.kernels.cpu.activations (torch's definitions in forms that neither overflow nor
// cancel for finite z; see there), so results agree with the CPU to the last bit of the
// double math functions (erfc, expm1, log1p, tanh, exp) and then agree after the one rounding.
//
// Codes (PARAM_ACT_CODES; p0, p1 the layer's parameters): 0 LeakyReLU (p0 slope), 1 Softplus
// (p0 beta, p1 threshold), 2 ELU (p0 alpha), 3 GELU exact, 4 GELU tanh, 5 SiLU, 6 Hardswish,
// 7 Hardsigmoid, 8 ReLU6, 9 Mish. The wrappers check the code; any other value computes Mish,
// as the CPU's last branch.

#define GRID_STRIDE(t, total) \
    for (I t = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; t < (total); t += (I)blockDim.x * (I)gridDim.x)

#define PA_SQRT1_2 0.7071067811865476      // 1 / sqrt(2)
#define PA_INV_SQRT_2PI 0.3989422804014327 // 1 / sqrt(2 pi)
#define PA_GELU_K 0.7978845608028654       // sqrt(2 / pi)
#define PA_GELU_C 0.044715
#define PA_GELU_CLIP 100.0                 // |z| beyond which the tanh form is saturated in double

// Python's (and Numba's) max/min: the first argument unless the second compares greater
// (smaller), so a NaN first argument is kept -- fmax/fmin would drop it.
__device__ __forceinline__ double pa_max(double a, double b) { return b > a ? b : a; }
__device__ __forceinline__ double pa_min(double a, double b) { return b < a ? b : a; }

__device__ __forceinline__ double pa_sigmoid(double u)
{
    // exp of a non-positive argument only
    if (u >= 0.0) return 1.0 / (1.0 + exp(-u));
    const double e = exp(u);
    return e / (1.0 + e);
}

__device__ __forceinline__ double pa_softplus(double u)
{
    return pa_max(u, 0.0) + log1p(exp(-fabs(u)));
}

__device__ __forceinline__ double pa_f(double z, int code, double p0, double p1)
{
    if (code == 0) return z > 0.0 ? z : z * p0;
    if (code == 1) {
        const double bz = z * p0;
        return bz > p1 ? z : pa_softplus(bz) / p0;
    }
    if (code == 2) return z > 0.0 ? z : p0 * expm1(pa_min(z, 0.0));
    if (code == 3) return 0.5 * z * erfc(-z * PA_SQRT1_2);
    if (code == 4) {
        const double zc = pa_min(pa_max(z, -PA_GELU_CLIP), PA_GELU_CLIP);
        return z * pa_sigmoid(2.0 * PA_GELU_K * (zc + PA_GELU_C * zc * zc * zc));  // z/2 (1 + tanh u)
    }
    if (code == 5) return z * pa_sigmoid(z);
    if (code == 6) return z * pa_min(pa_max(z + 3.0, 0.0), 6.0) / 6.0;
    if (code == 7) return pa_min(pa_max(z + 3.0, 0.0), 6.0) / 6.0;
    if (code == 8) return pa_min(pa_max(z, 0.0), 6.0);
    return z * tanh(pa_softplus(z));
}

__device__ __forceinline__ double pa_df(double z, int code, double p0, double p1)
{
    // f'(z), with torch autograd's value at the kinks (see activations.py)
    if (code == 0) return z > 0.0 ? 1.0 : p0;
    if (code == 1) {
        const double bz = z * p0;
        return bz > p1 ? 1.0 : pa_sigmoid(bz);
    }
    if (code == 2) return z > 0.0 ? 1.0 : p0 * exp(pa_min(z, 0.0));
    if (code == 3) {
        const double zc = pa_min(pa_max(z, -1e3), 1e3);  // exp(-zc^2/2) is 0 there already
        return 0.5 * erfc(-z * PA_SQRT1_2) + z * PA_INV_SQRT_2PI * exp(-0.5 * zc * zc);
    }
    if (code == 4) {
        const double zc = pa_min(pa_max(z, -PA_GELU_CLIP), PA_GELU_CLIP);
        const double u2 = 2.0 * PA_GELU_K * (zc + PA_GELU_C * zc * zc * zc);
        const double s = pa_sigmoid(u2);
        return s + zc * 2.0 * s * pa_sigmoid(-u2) * (PA_GELU_K * (1.0 + 3.0 * PA_GELU_C * zc * zc));
    }
    if (code == 5) return pa_sigmoid(z) + z * pa_sigmoid(z) * pa_sigmoid(-z);
    if (code == 6) {
        if (z <= -3.0) return 0.0;
        return z < 3.0 ? z / 3.0 + 0.5 : 1.0;
    }
    if (code == 7) return (-3.0 < z && z < 3.0) ? 1.0 / 6.0 : 0.0;
    if (code == 8) return (0.0 < z && z < 6.0) ? 1.0 : 0.0;
    const double t = tanh(pa_softplus(z));
    return t + z * pa_sigmoid(z) * (1.0 - t * t);
}

template <typename T, typename I>
__global__ void param_act(const T* z, int code, double p0, double p1, I n_, T* out)
{
    // out = f(z)
    GRID_STRIDE(t, n_) {
        out[t] = (T)pa_f((double)z[t], code, p0, p1);
    }
}

template <typename T, typename I>
__global__ void param_act_grad(const T* g, const T* z, int code, double p0, double p1, I n_, T* out)
{
    // out = g * f'(z), the product in double (the CPU's T * float64)
    GRID_STRIDE(t, n_) {
        out[t] = (T)((double)g[t] * pa_df((double)z[t], code, p0, p1));
    }
}
