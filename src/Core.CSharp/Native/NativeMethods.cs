using System.Runtime.InteropServices;

namespace MechInterp.Native;

/// <summary>The P/Invoke declarations of native/include/mechinterp.h: the only place with P/Invoke.</summary>
internal static unsafe partial class NativeMethods
{
    public const string Library = "mechinterp_native";

    /// <summary>The ABI version this assembly was written against (MI_ABI_VERSION).</summary>
    public const int AbiVersion = 5;

    [LibraryImport(Library)] public static partial int mi_version();
    [LibraryImport(Library)] public static partial IntPtr mi_last_error();
    [LibraryImport(Library)] public static partial int mi_set_num_threads(int n);
    [LibraryImport(Library)] public static partial int mi_get_num_threads();
    [LibraryImport(Library)] public static partial int mi_cpu_has_avx2();
    [LibraryImport(Library)] public static partial int mi_has_cuda();
    [LibraryImport(Library)] public static partial int mi_cpu_has_avx512();
    [LibraryImport(Library)] public static partial int mi_set_simd(int level);
    [LibraryImport(Library)] public static partial int mi_get_simd();

    /// <summary>The data pointer of a TorchSharp tensor (at its storage offset): TorchSharp exposes no public one.</summary>
    [LibraryImport("LibTorchSharp")] public static partial IntPtr THSTensor_data(IntPtr tensor);

    [LibraryImport(Library)] public static partial int mi_softmax_rows_f32(float* x, float* y, long rows, long cols);
    [LibraryImport(Library)] public static partial int mi_softmax_rows_backward_f32(float* y, float* dy, float* dx, long rows, long cols);

    [LibraryImport(Library)]
    public static partial int mi_attention_forward_f32(float* q, float* k, float* v, long batch, long heads, long qLen, long kvLen,
                                                       long dHead, int causal, float* output, float* lse, float* scores, float* pattern);
    [LibraryImport(Library)]
    public static partial int mi_attention_backward_f32(float* q, float* k, float* v, float* output, float* lse, float* dout,
                                                        long batch, long heads, long qLen, long kvLen, long dHead, int causal,
                                                        float* dq, float* dk, float* dv);

    [LibraryImport(Library)]
    public static partial int mi_attention_rotary_forward_f32(float* q, float* k, float* v, long batch, long heads, long qLen, long kvLen,
                                                              long dHead, int causal, float* rotCos, float* rotSin, long rotaryDim,
                                                              float* output, float* lse, float* scores, float* pattern);
    [LibraryImport(Library)]
    public static partial int mi_attention_rotary_backward_f32(float* q, float* k, float* v, float* output, float* lse, float* dout,
                                                               long batch, long heads, long qLen, long kvLen, long dHead, int causal,
                                                               float* rotCos, float* rotSin, long rotaryDim, float* dq, float* dk, float* dv);

    [LibraryImport(Library)]
    public static partial int mi_moe_route_f32(float* weights, long groups, long tokens, long experts, long k, int choose, int renormalize,
                                               long capacity, long* expertIndex, float* gates, long* counts, byte* kept, long* dropped);
    [LibraryImport(Library)]
    public static partial int mi_moe_route_backward_f32(float* weights, long* expertIndex, byte* kept, float* dgates, long rows,
                                                        long experts, long k, int renormalize, float* dweights);
    [LibraryImport(Library)] public static partial int mi_moe_count_i64(long* expertIndex, long tokens, long k, long experts, long* counts);
    [LibraryImport(Library)]
    public static partial int mi_moe_permute_i64(long* expertIndex, long tokens, long k, long experts, long groupStride, long* rowOf, long* offsets);
    [LibraryImport(Library)]
    public static partial int mi_moe_gather_f32(float* x, long* rowOf, long tokens, long k, long d, long rows, float* grouped);
    [LibraryImport(Library)]
    public static partial int mi_moe_gather_backward_f32(float* dgrouped, long* rowOf, long tokens, long k, long d, long rows, float* dx);
    [LibraryImport(Library)]
    public static partial int mi_moe_combine_f32(float* grouped, float* gates, long* rowOf, long tokens, long k, long d, long rows, float* y);
    [LibraryImport(Library)]
    public static partial int mi_moe_combine_backward_f32(float* grouped, float* gates, long* rowOf, float* dy, long tokens, long k,
                                                          long d, long rows, float* dgrouped, float* dgates);

    [LibraryImport(Library)]
    public static partial int mi_adamw_step_f32(float* p, float* g, float* m, float* v, long instances, long n, double* lr, double* weightDecay,
                                                double beta1, double beta2, double eps, long step);
    [LibraryImport(Library)] public static partial int mi_sum_squares_f32(float* x, long instances, long n, double* sums);
    [LibraryImport(Library)] public static partial int mi_scale_rows_f32(float* x, long instances, long n, float* factor);
}
