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
    /// Returns z [batch, head, query, d_head]; with <paramref name="returnPattern"/> also the pattern and the (masked,
    /// scaled) scores [batch, head, query, key]. <paramref name="returnScores"/> asks for the scores on their own
    /// (true) or leaves them out (false: the pattern alone, one [b, h, q, k] tensor written instead of two); unset, it
    /// follows returnPattern. With <paramref name="rotary"/>, q and k are rotated first (the native kernel does it
    /// while packing them, so no rotated copy is made). Differentiable in q, k and v, and through what it returns.
    /// </summary>
    public static AttentionResult Attention(Tensor q, Tensor k, Tensor v, bool causal, bool returnPattern = false, KernelBackend? backend = null,
                                            RotaryTables? rotary = null, bool? returnScores = null)
    {
        var outputs = new AttentionOutputs(returnScores ?? returnPattern, returnPattern);
        TorchRuntime.EnsureLoaded();
        AttentionShapes.Check(q, k, v);
        if (causal && q.shape[2] > k.shape[2])
            throw new ArgumentException($"causal attention needs q_len ({q.shape[2]}) <= kv_len ({k.shape[2]}): the first {q.shape[2] - k.shape[2]} queries would see no key");
        rotary?.Check(q, k);
        return UseNative(backend, q)
            ? NativeAttention.Forward(q, k, v, causal, outputs, rotary)
            : ManagedAttention.Forward(q, k, v, causal, outputs, rotary);
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
    /// Top-k routing with a capacity limit, the one definition the MoE layer uses. weights [groups, tokens, experts]:
    /// each token's weight for every expert (the router's softmax over all experts), groups being independent
    /// models of a batch with their own experts and capacity. The k largest weights pick the experts unless
    /// <paramref name="expertIndex"/> [groups, tokens, k] gives them (a hook replaced the choice); either way the
    /// gates are the chosen weights, divided by their sum with <paramref name="renormalize"/> (Mixtral), and an expert
    /// keeps at most <paramref name="capacity"/> pairs of its group (0: no limit; see
    /// <see cref="ExpertRouting.CapacityOf"/>), every token's first choice before any second choice.
    /// Gates are differentiable in the weights on both backends.
    /// </summary>
    public static ExpertRouting Route(Tensor weights, int k, bool renormalize = false, long capacity = 0, Tensor? expertIndex = null,
                                      KernelBackend? backend = null)
    {
        TorchRuntime.EnsureLoaded();
        if (weights.dim() != 3) throw new ArgumentException($"expert weights must be [groups, tokens, experts], got {AttentionShapes.Shape(weights)}");
        long groups = weights.shape[0], tokens = weights.shape[1], experts = weights.shape[2];
        if (k < 1 || k > experts) throw new ArgumentOutOfRangeException(nameof(k), k, $"k must be in [1, experts = {experts}], got {k}");
        if (capacity < 0) throw new ArgumentOutOfRangeException(nameof(capacity), capacity, $"capacity must be 0 (no limit) or positive, got {capacity}");
        if (expertIndex is not null)
        {
            if (!expertIndex.shape.SequenceEqual(new[] { groups, tokens, (long)k }) || expertIndex.dtype != ScalarType.Int64)
                throw new ArgumentException($"a given expert index must be int64 [groups = {groups}, tokens = {tokens}, k = {k}], got {expertIndex.dtype} {AttentionShapes.Shape(expertIndex)}");
            if (expertIndex.numel() > 0)
            {
                long min = expertIndex.min().item<long>(), max = expertIndex.max().item<long>();
                if (min < 0 || max >= experts)
                    throw new ArgumentOutOfRangeException(nameof(expertIndex), $"expert index out of range [0, {experts}): found {(min < 0 ? min : max)}");
            }
        }
        // A token whose weights are all NaN (all-NaN router logits) has no top k: the twins used to pick different experts for it.
        using (var allNan = weights.isnan().all(2))
            if (allNan.any().item<bool>())
            {
                using var first = allNan.nonzero();
                throw new ArgumentException($"expert weights are all NaN for token {first[0, 1].item<long>()} of group {first[0, 0].item<long>()} (of {tokens} tokens): no expert can be chosen");
            }
        return UseNative(backend, weights) && weights.numel() > 0
            ? NativeRouting.Route(weights, k, renormalize, capacity, expertIndex)
            : ManagedRouting.Route(weights, k, renormalize, capacity, expertIndex);
    }

    /// <summary>
    /// The native kernels take float32 CPU tensors; under Auto anything else (float64 gradient checks)
    /// runs the managed twin, while an explicit Native choice reports the mismatch.
    /// </summary>
    internal static bool UseNative(KernelBackend? backend, Tensor sample)
    {
        var choice = backend ?? Settings.Kernels;
        if (choice == KernelBackend.Auto && (sample.dtype != ScalarType.Float32 || sample.device_type != TorchSharp.DeviceType.CPU))
            return false;
        return NativeKernels.ShouldUseNative(choice);
    }
}

/// <summary>Attention output; Scores and Pattern are null unless asked for. Dispose what you keep.</summary>
public sealed record AttentionResult(Tensor Z, Tensor? Scores, Tensor? Pattern);

/// <summary>Which [batch, head, query, key] tensors an attention call returns besides z.</summary>
internal readonly record struct AttentionOutputs(bool Scores, bool Pattern)
{
    public bool Any => Scores || Pattern;
}

/// <summary>
/// Rotary position embedding for <see cref="Kernel.Attention"/> (GPT-NeoX "rotate half" on the first RotaryDim
/// entries of d_head): Cos and Sin [kv_len, rotary_dim], a row at position p becoming
/// x · Cos[p] + roll(x, rotary_dim / 2) · Sin[p] there (Sin holds −sin on its first half, +sin on its second).
/// Key j is at position j, query i at i + kv_len − q_len.
/// </summary>
public sealed record RotaryTables(Tensor Cos, Tensor Sin)
{
    public long RotaryDim => Cos.shape[^1];

    internal void Check(Tensor q, Tensor k)
    {
        long kv = k.shape[^2], dHead = q.shape[^1];
        AttentionShapes.SameKind("rotary attention", ("q", q), ("cos", Cos), ("sin", Sin));
        if (Cos.dim() != 2 || !Cos.shape.SequenceEqual(Sin.shape) || Cos.shape[0] < kv)
            throw new ArgumentException($"rotary tables must both be [kv_len = {kv}, rotary_dim] (or longer), got cos {AttentionShapes.Shape(Cos)} and sin {AttentionShapes.Shape(Sin)}");
        if (RotaryDim <= 0 || RotaryDim % 2 != 0 || RotaryDim > dHead)
            throw new ArgumentException($"rotary_dim ({RotaryDim}) must be even and at most d_head ({dHead})");
        if (q.shape[^2] > kv)
            throw new ArgumentException($"rotary attention needs q_len ({q.shape[^2]}) <= kv_len ({kv}): queries are the last positions");
    }

    /// <summary>The first n positions (the tables may be longer than a shorter sequence needs).</summary>
    internal RotaryTables First(long n) => n == Cos.shape[0] ? this : new RotaryTables(Cos.narrow(0, 0, n), Sin.narrow(0, 0, n));

    /// <summary>x [.., pos, d_head] rotated, row r at position offset + r: the managed definition the kernel matches.</summary>
    internal Tensor Apply(Tensor x, long offset)
    {
        long pos = x.shape[^2], dHead = x.shape[^1], rd = RotaryDim;
        var c = Cos.narrow(0, offset, pos);   // [pos, rotary_dim]
        var s = Sin.narrow(0, offset, pos);
        if (rd == dHead) return x.mul(c).addcmul_(x.roll(rd / 2, -1), s, 1);
        var rot = x.narrow(-1, 0, rd);
        return cat([rot.mul(c).addcmul_(rot.roll(rd / 2, -1), s, 1), x.narrow(-1, rd, dHead - rd)], -1);
    }

    /// <summary>The transpose of <see cref="Apply"/> (a gradient taken back through the rotation): g · Cos + roll(g · Sin).</summary>
    internal Tensor ApplyTransposed(Tensor g, long offset)
    {
        long pos = g.shape[^2], dHead = g.shape[^1], rd = RotaryDim;
        var c = Cos.narrow(0, offset, pos);
        var s = Sin.narrow(0, offset, pos);
        if (rd == dHead) return g.mul(c).add_(g.mul(s).roll(rd / 2, -1));
        var rot = g.narrow(-1, 0, rd);
        return cat([rot.mul(c).add_(rot.mul(s).roll(rd / 2, -1)), g.narrow(-1, rd, dHead - rd)], -1);
    }
}
