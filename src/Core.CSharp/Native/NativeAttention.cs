using MechInterp.Kernels;
using static TorchSharp.torch;

namespace MechInterp.Native;

/// <summary>The native attention kernel behind <see cref="Kernel.Attention"/>. Not yet implemented: the managed twin runs.</summary>
internal static class NativeAttention
{
    public static bool IsImplemented => false;

    public static AttentionResult Forward(Tensor q, Tensor k, Tensor v, bool causal, bool returnPattern) =>
        throw new NotSupportedException("native attention is not built yet");
}

/// <summary>The native expert dispatch behind <see cref="Kernel.ExpertMlp"/>. Not yet implemented: the managed twin runs.</summary>
internal static class NativeExperts
{
    public static bool IsImplemented => false;

    public static Tensor Forward(Tensor x, Tensor expertIndex, Tensor gates, Tensor wIn, Tensor bIn, Tensor wOut, Tensor bOut,
                                 Func<Tensor, Tensor> activation) =>
        throw new NotSupportedException("native expert dispatch is not built yet");
}
