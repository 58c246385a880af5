using static TorchSharp.torch;

namespace MechInterp.Kernels;

/// <summary>How router logits become gates for the chosen experts.</summary>
public enum RouterGating
{
    /// <summary>Softmax over all experts, read at the k chosen ones (Switch Transformer, GShard).</summary>
    Softmax = 0,
    /// <summary>Softmax over the k chosen logits only, so a token's gates sum to 1 (Mixtral).</summary>
    TopKSoftmax = 1,
}

/// <summary>
/// The result of top-k routing. ExpertIndex [tokens, k] int64 (largest logit first), Gates [tokens, k]
/// (differentiable in the logits), Counts [experts] int64 (pairs each expert keeps), Kept [tokens, k]
/// bool, and Dropped [n, 2] int64: the (token, slot) pairs that a capacity limit turned away. A dropped
/// pair keeps its expert index but has gate 0, so <see cref="Kernel.ExpertMlp"/> adds nothing for it.
/// </summary>
public sealed record ExpertRouting(Tensor ExpertIndex, Tensor Gates, Tensor Counts, Tensor Kept, Tensor Dropped)
{
    /// <summary>Number of dropped (token, slot) pairs.</summary>
    public long DroppedCount => Dropped.shape[0];
}

/// <summary>Capacity arithmetic shared by both backends.</summary>
public static class RoutingCapacity
{
    /// <summary>
    /// Pairs an expert may keep: ceil(factor * tokens * k / experts); 0 means no limit (factor null).
    /// </summary>
    public static long Of(double? capacityFactor, long tokens, long k, long experts)
    {
        if (capacityFactor is null) return 0;
        if (!(capacityFactor > 0))
            throw new ArgumentOutOfRangeException(nameof(capacityFactor), capacityFactor, $"capacity factor must be positive, got {capacityFactor}");
        return Math.Max(1, (long)Math.Ceiling(capacityFactor.Value * tokens * k / experts));
    }
}

/// <summary>The managed twin of routing: topk, softmax and a one-hot cumulative count for the capacity.</summary>
internal static class ManagedRouting
{
    public static ExpertRouting Route(Tensor logits, int k, RouterGating gating, long capacity)
    {
        long tokens = logits.shape[0], experts = logits.shape[1];
        var (values, index) = logits.topk(k, dim: -1);                              // [tokens, k] each
        var gates = gating == RouterGating.Softmax ? logits.softmax(-1).gather(1, index) : values.softmax(-1);   // [tokens, k]
        using var scope = NewDisposeScope();
        // Capacity in GShard's order: every token's first choice before any second choice.
        var slotMajor = index.t().reshape(-1);                                      // [k * tokens]
        var oneHot = nn.functional.one_hot(slotMajor, experts);                    // [k * tokens, experts]
        var rank = oneHot.cumsum(0).sub(1).mul(oneHot).sum(-1);                    // [k * tokens] place in its expert's queue
        var keptSlotMajor = capacity > 0 ? rank.lt(capacity) : ones_like(rank, dtype: ScalarType.Bool);
        var kept = keptSlotMajor.reshape(k, tokens).t().contiguous();             // [tokens, k]
        var counts = oneHot.mul(keptSlotMajor.unsqueeze(1)).sum(dim: 0L).to_type(ScalarType.Int64);   // [experts]
        var dropped = kept.logical_not().nonzero();                                // [n, 2] (token, slot)
        var result = new ExpertRouting(index, gates.mul(kept), counts, kept, dropped);
        foreach (var t in new[] { kept, counts, dropped }) t.MoveToOuterDisposeScope();
        result = result with { Gates = result.Gates.MoveToOuterDisposeScope() };
        return result;
    }
}
