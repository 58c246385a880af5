using static TorchSharp.torch;

namespace MechInterp.Kernels;

/// <summary>
/// What top-k routing with a capacity limit decided (<see cref="Kernel.Route"/>), for groups of tokens that are
/// independent models of a batch: ExpertIndex [groups, tokens, k] int64 (the chosen experts), Gates [groups, tokens, k]
/// (the chosen experts' weights, renormalized if asked, 0 for a dropped pair; differentiable in the weights),
/// Kept [groups, tokens, k] bool, Counts [groups · experts] (pairs each expert keeps, group-major), Dropped (pairs a
/// full expert turned away) and the Capacity that applied (0: no limit). A dropped pair keeps its expert index but
/// has gate 0, so <see cref="Kernel.ExpertMlp"/> adds nothing for it. The tensors belong to the caller's dispose scope.
/// </summary>
public sealed record ExpertRouting(Tensor ExpertIndex, Tensor Gates, Tensor Kept, long[] Counts, long Dropped, long Capacity)
{
    /// <summary>All (token, slot) pairs, kept or dropped.</summary>
    public long Pairs => Counts.Sum() + Dropped;

    /// <summary>
    /// Pairs an expert may keep of `tokens` tokens routed to `k` of `experts` experts: ceil(factor · tokens · k / experts)
    /// (GShard, Switch); factor 0 means no limit and gives 0, the capacity that means no limit.
    /// </summary>
    public static long CapacityOf(double factor, long tokens, int k, int experts)
    {
        if (!(factor >= 0)) throw new ArgumentOutOfRangeException(nameof(factor), factor, $"capacity factor must be 0 (no limit) or positive, got {factor}");
        return factor == 0 ? 0 : Math.Max(1, (long)Math.Ceiling(factor * tokens * k / experts));
    }
}

/// <summary>
/// The managed twin of the native routing (native/src/route.hpp): torch's topk, a gather for the gates, and the
/// capacity rule as a one-hot running count in GShard's order (every token's first choice before any second choice).
/// </summary>
internal static class ManagedRouting
{
    /// <summary>weights [groups, tokens, experts]; given [groups, tokens, k] or null to choose the top k.</summary>
    public static ExpertRouting Route(Tensor weights, int k, bool renormalize, long capacity, Tensor? given)
    {
        long groups = weights.shape[0], tokens = weights.shape[1], experts = weights.shape[2];
        var index = given ?? weights.topk(k, dim: -1).indexes;                    // [groups, tokens, k]
        var gates = weights.gather(-1, index);                                    // [groups, tokens, k]
        if (renormalize) gates = gates.div(gates.sum(-1, keepdim: true));
        using var scope = NewDisposeScope();
        var slotMajor = index.transpose(1, 2).reshape(groups, k * tokens);        // [groups, k · tokens]: all slot-0 pairs first
        var oneHot = nn.functional.one_hot(slotMajor, experts);                   // [groups, k · tokens, experts]
        var keptSlotMajor = capacity == 0
            ? ones(slotMajor.shape, ScalarType.Bool)
            : oneHot.cumsum(1).mul(oneHot).sum(-1).sub(1).lt(capacity);         // place in its expert's queue < capacity
        var kept = keptSlotMajor.view(groups, k, tokens).transpose(1, 2).contiguous();   // [groups, tokens, k]
        var counts = oneHot.mul(keptSlotMajor.unsqueeze(-1)).sum(1L).reshape(-1).to(ScalarType.Int64).data<long>().ToArray();   // [groups · experts]
        if (capacity > 0) gates = gates.mul(kept.to(gates.dtype)).MoveToOuterDisposeScope();
        return new ExpertRouting(index, gates, kept.MoveToOuterDisposeScope(), counts, groups * tokens * k - counts.Sum(), capacity);
    }
}
