using static TorchSharp.torch;

namespace MechInterp.Kernels;

/// <summary>
/// The managed twin of expert dispatch: a loop over experts with index_select / index_add_,
/// as Hugging Face's Mixtral does. Also the `loop` baseline of the benchmark.
/// </summary>
internal static class ManagedExperts
{
    public static Tensor Forward(Tensor x, Tensor expertIndex, Tensor gates, Tensor wIn, Tensor bIn, Tensor wOut, Tensor bOut,
                                 Func<Tensor, Tensor> activation)
    {
        long tokens = x.shape[0], k = expertIndex.shape[1], experts = wIn.shape[0];
        var output = zeros_like(x);                                // [tokens, d_model]
        using var flatExpert = expertIndex.reshape(-1);            // [tokens * k]
        using var flatGate = gates.reshape(-1);                    // [tokens * k]
        using var slotToken = arange(tokens, device: x.device).repeat_interleave(k);   // [tokens * k]
        for (long e = 0; e < experts; e++)
        {
            using var scope = NewDisposeScope();
            var slots = flatExpert.eq(e).nonzero().squeeze(1);    // [n_e]
            if (slots.numel() == 0) continue;
            var tokenIds = slotToken.index_select(0, slots);      // [n_e]
            var xe = x.index_select(0, tokenIds);                 // [n_e, d_model]
            var hidden = activation(xe.matmul(wIn[e]).add(bIn[e]));   // [n_e, d_mlp]
            var ye = hidden.matmul(wOut[e]).add(bOut[e]);         // [n_e, d_model]
            var weighted = ye.mul(flatGate.index_select(0, slots).unsqueeze(1));
            output = output.index_add(0, tokenIds, weighted, 1.0).MoveToOuterDisposeScope();
        }
        return output;
    }
}

internal static class ExpertShapes
{
    public static void Check(Tensor x, Tensor expertIndex, Tensor gates, Tensor wIn, Tensor bIn, Tensor wOut, Tensor bOut)
    {
        string S(Tensor t) => AttentionShapes.Shape(t);
        if (x.dim() != 2) throw new ArgumentException($"x must be [tokens, d_model], got {S(x)}");
        if (expertIndex.dim() != 2 || expertIndex.shape[0] != x.shape[0])
            throw new ArgumentException($"expert index must be [tokens, k] with tokens = {x.shape[0]}, got {S(expertIndex)}");
        if (!gates.shape.SequenceEqual(expertIndex.shape))
            throw new ArgumentException($"gates {S(gates)} must have the shape of the expert index {S(expertIndex)}");
        if (expertIndex.dtype != ScalarType.Int64)
            throw new ArgumentException($"expert index must be int64, got {expertIndex.dtype}");
        AttentionShapes.SameKind("expert MLP", ("x", x), ("gates", gates), ("W_in", wIn), ("b_in", bIn), ("W_out", wOut), ("b_out", bOut));
        long e = wIn.shape[0], d = x.shape[1], f = wIn.dim() == 3 ? wIn.shape[2] : 0;
        if (wIn.dim() != 3 || wIn.shape[1] != d)
            throw new ArgumentException($"W_in must be [n_experts, d_model = {d}, d_mlp], got {S(wIn)}");
        if (!bIn.shape.SequenceEqual(new[] { e, f }) || !wOut.shape.SequenceEqual(new[] { e, f, d }) || !bOut.shape.SequenceEqual(new[] { e, d }))
            throw new ArgumentException($"expert weights disagree: W_in {S(wIn)}, b_in {S(bIn)}, W_out {S(wOut)}, b_out {S(bOut)}");
        if (expertIndex.numel() > 0)
        {
            long min = expertIndex.min().item<long>(), max = expertIndex.max().item<long>();
            if (min < 0 || max >= e)
                throw new ArgumentOutOfRangeException(nameof(expertIndex), $"expert index out of range [0, {e}): found {(min < 0 ? min : max)}");
        }
    }
}
