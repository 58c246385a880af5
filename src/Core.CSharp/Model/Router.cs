using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>What the routing of one MoE forward pass did: kept (token, slot) pairs per expert and how many pairs were dropped.</summary>
public sealed record RoutingStats(long[] Counts, long Dropped, long Capacity)
{
    /// <summary>All (token, slot) pairs of the pass, kept or dropped.</summary>
    public long Pairs => Counts.Sum() + Dropped;
}

/// <summary>Routing after the capacity limit: gates [tokens, k] with dropped pairs zeroed, kept [tokens, k] (bool), and the counts.</summary>
public sealed record CapacityRouting(Tensor Gates, Tensor Kept, RoutingStats Stats);

/// <summary>
/// The capacity limit of top-k routing (GShard / Switch): an expert processes at most `capacity`
/// (token, slot) pairs, every token's slot 0 before any slot 1, tokens in order. A dropped pair keeps
/// its expert index but gets gate 0 (it adds nothing to the output and passes no gradient) and is
/// counted, never silently lost. The same rule as the native mi_moe_route_f32.
/// </summary>
public static class Router
{
    /// <summary>capacity = ceil(factor · tokens · k / experts); factor 0 means no limit (returns 0).</summary>
    public static long Capacity(double factor, long tokens, int k, int experts)
    {
        if (factor < 0 || double.IsNaN(factor)) throw new ArgumentOutOfRangeException(nameof(factor), factor, $"capacity factor must be non-negative, got {factor}");
        return factor == 0 ? 0 : Math.Max(1, (long)Math.Ceiling(factor * tokens * k / experts));
    }

    /// <summary>expertIndex [tokens, k] int64, gates [tokens, k]; capacity 0 keeps every pair.</summary>
    public static CapacityRouting LimitCapacity(Tensor expertIndex, Tensor gates, int experts, long capacity)
    {
        if (expertIndex.dim() != 2 || !gates.shape.SequenceEqual(expertIndex.shape))
            throw new ArgumentException($"expert index [{string.Join(", ", expertIndex.shape)}] and gates [{string.Join(", ", gates.shape)}] must both be [tokens, k]");
        if (capacity < 0) throw new ArgumentOutOfRangeException(nameof(capacity), capacity, $"capacity must be 0 (no limit) or positive, got {capacity}");
        long tokens = expertIndex.shape[0], k = expertIndex.shape[1];
        using var scope = NewDisposeScope();
        var slotMajor = expertIndex.t().reshape(-1);                           // [k * tokens]: all slot-0 pairs first
        var oneHot = nn.functional.one_hot(slotMajor, experts);                // [k * tokens, experts]
        Tensor keptSlotMajor;                                                  // [k * tokens] bool
        if (capacity == 0) keptSlotMajor = ones(slotMajor.shape, ScalarType.Bool);
        else
        {
            var place = oneHot.cumsum(0).mul(oneHot).sum(1).sub(1);          // [k * tokens]: the pair's place in its expert's queue
            keptSlotMajor = place.lt(capacity);
        }
        var counts = oneHot.mul(keptSlotMajor.unsqueeze(1).to(ScalarType.Int64)).sum(0L).to(ScalarType.Int64).data<long>().ToArray();   // [experts]
        var kept = keptSlotMajor.view(k, tokens).t().contiguous();            // [tokens, k]
        long dropped = tokens * k - counts.Sum();
        var limited = capacity == 0 ? gates.alias() : gates.mul(kept.to(gates.dtype));
        return new CapacityRouting(limited.MoveToOuterDisposeScope(), kept.MoveToOuterDisposeScope(), new RoutingStats(counts, dropped, capacity));
    }
}
