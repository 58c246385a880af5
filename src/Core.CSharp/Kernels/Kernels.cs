using MechInterp.Native;
using MechInterp.Runtime;
using static TorchSharp.torch;

namespace MechInterp.Kernels;

/// <summary>
/// The kernels with a native and a managed implementation. Each call picks one from
/// <see cref="Settings.Kernels"/> unless a backend is passed; tests hold the two equal.
/// </summary>
public static class Kernel
{
    /// <summary>Softmax over the last dimension; differentiable on both backends.</summary>
    public static Tensor SoftmaxLastDim(Tensor x, KernelBackend? backend = null)
    {
        TorchRuntime.EnsureLoaded();
        return NativeKernels.ShouldUseNative(backend ?? Settings.Kernels)
            ? SoftmaxFunction.apply(x)
            : x.softmax(-1);
    }

    /// <summary>
    /// Scaled dot-product attention, scale 1/sqrt(d_head). q, k, v: [batch, head, pos, d_head].
    /// Returns z [batch, head, query, d_head]; with <paramref name="returnPattern"/> also the
    /// (masked, scaled) scores and the pattern [batch, head, query, key]. Differentiable.
    /// </summary>
    public static AttentionResult Attention(Tensor q, Tensor k, Tensor v, bool causal, bool returnPattern = false, KernelBackend? backend = null)
    {
        TorchRuntime.EnsureLoaded();
        AttentionShapes.Check(q, k, v);
        return UseNative(backend, q)
            ? NativeAttention.Forward(q, k, v, causal, returnPattern)
            : ManagedAttention.Forward(q, k, v, causal, returnPattern);
    }

    /// <summary>
    /// Top-k mixture-of-experts MLP: every token goes through its k experts, outputs weighted by gates.
    /// x [tokens, d_model], expertIndex [tokens, k] (int64), gates [tokens, k], weights per expert:
    /// wIn [E, d_model, d_mlp], bIn [E, d_mlp], wOut [E, d_mlp, d_model], bOut [E, d_model].
    /// Returns [tokens, d_model]. Differentiable in x, gates and the weights.
    /// </summary>
    public static Tensor ExpertMlp(Tensor x, Tensor expertIndex, Tensor gates, Tensor wIn, Tensor bIn, Tensor wOut, Tensor bOut,
                                   Func<Tensor, Tensor> activation, KernelBackend? backend = null)
    {
        TorchRuntime.EnsureLoaded();
        ExpertShapes.Check(x, expertIndex, gates, wIn, bIn, wOut, bOut);
        return UseNative(backend, x)
            ? NativeExperts.Forward(x, expertIndex, gates, wIn, bIn, wOut, bOut, activation)
            : ManagedExperts.Forward(x, expertIndex, gates, wIn, bIn, wOut, bOut, activation);
    }

    /// <summary>
    /// Top-k routing of router logits [tokens, experts]: expert indices, gates, per-expert counts,
    /// and, with a <paramref name="capacityFactor"/>, the (token, slot) pairs dropped because their
    /// expert was full (capacity = ceil(factor * tokens * k / experts); first choices claim it first).
    /// Gates are differentiable in the logits on both backends.
    /// </summary>
    public static ExpertRouting RouteTopK(Tensor logits, int k, RouterGating gating = RouterGating.TopKSoftmax,
                                          double? capacityFactor = null, KernelBackend? backend = null)
    {
        TorchRuntime.EnsureLoaded();
        if (logits.dim() != 2) throw new ArgumentException($"router logits must be [tokens, experts], got {AttentionShapes.Shape(logits)}");
        long tokens = logits.shape[0], experts = logits.shape[1];
        if (k < 1 || k > experts) throw new ArgumentOutOfRangeException(nameof(k), k, $"k must be in [1, experts = {experts}], got {k}");
        long capacity = RoutingCapacity.Of(capacityFactor, tokens, k, experts);
        return UseNative(backend, logits) && tokens > 0
            ? NativeRouting.Route(logits, k, gating, capacity)
            : ManagedRouting.Route(logits, k, gating, capacity);
    }

    /// <summary>
    /// The native kernels take float32 CPU tensors; under Auto anything else (float64 gradient checks)
    /// runs the managed twin, while an explicit Native choice reports the mismatch.
    /// </summary>
    private static bool UseNative(KernelBackend? backend, Tensor sample)
    {
        var choice = backend ?? Settings.Kernels;
        if (choice == KernelBackend.Auto && (sample.dtype != ScalarType.Float32 || sample.device_type != TorchSharp.DeviceType.CPU))
            return false;
        return NativeKernels.ShouldUseNative(choice);
    }
}

/// <summary>Attention output; Scores and Pattern are null unless asked for. Dispose what you keep.</summary>
public sealed record AttentionResult(Tensor Z, Tensor? Scores, Tensor? Pattern);
