using static TorchSharp.torch;

namespace MechInterp.Kernels;

/// <summary>The managed twin of the attention kernel: libtorch SDPA, or materialized when the pattern is wanted.</summary>
internal static class ManagedAttention
{
    public static AttentionResult Forward(Tensor q, Tensor k, Tensor v, bool causal, AttentionOutputs outputs, RotaryTables? rotary = null)
    {
        if (rotary is not null)
        {
            q = rotary.Apply(q, k.shape[^2] - q.shape[^2]);
            k = rotary.Apply(k, 0);
        }
        // libtorch's causal SDPA aligns the mask top-left; with fewer queries than keys (a KV cache) the
        // last query must see every key, as Scores masks it, so that case takes the materialized path.
        bool sdpaMaskAgrees = !causal || q.shape[^2] == k.shape[^2];
        if (!outputs.Any && sdpaMaskAgrees)
        {
            // libtorch's CPU SDPA returns 0 for a query row holding a NaN, where the materialized path and the native
            // kernel give NaN: adding 0 · Σ q row makes the row NaN there too (and changes nothing, gradient included, elsewhere).
            using var poison = q.sum(-1, keepdim: true).mul_(0);                              // [batch, head, query, 1]
            using var fused = nn.functional.scaled_dot_product_attention(q, k, v, is_casual: causal);
            return new AttentionResult(fused.add(poison), null, null);   // out of place: SDPA's backward keeps its output
        }
        var scores = Scores(q, k, causal);               // [batch, head, query, key]
        var pattern = scores.softmax(-1);                // [batch, head, query, key]
        var z = pattern.matmul(v);                       // [batch, head, query, d_head]
        if (!outputs.Scores) scores.Dispose();
        if (!outputs.Pattern) pattern.Dispose();
        return new AttentionResult(z, outputs.Scores ? scores : null, outputs.Pattern ? pattern : null);
    }

    /// <summary>q k^T / sqrt(d_head), with -inf above the diagonal when causal (as TransformerLens' hook_attn_scores).</summary>
    public static Tensor Scores(Tensor q, Tensor k, bool causal)
    {
        long dHead = q.shape[^1], tq = q.shape[^2], tk = k.shape[^2];
        var scores = q.matmul(k.transpose(-2, -1)).div(Math.Sqrt(dHead));   // [batch, head, query, key]
        if (!causal) return scores;
        using var mask = ones(tq, tk, dtype: ScalarType.Bool, device: q.device).triu(1 + tk - tq);
        return scores.masked_fill(mask, float.NegativeInfinity);
    }
}

internal static class AttentionShapes
{
    public static void Check(Tensor q, Tensor k, Tensor v)
    {
        if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
            throw new ArgumentException($"attention wants q, k, v as [batch, head, pos, d_head]; got ranks {q.dim()}, {k.dim()}, {v.dim()}");
        if (q.shape[0] != k.shape[0] || q.shape[1] != k.shape[1] || q.shape[3] != k.shape[3])
            throw new ArgumentException($"q {Shape(q)} and k {Shape(k)} must agree in batch, head and d_head");
        if (!k.shape.SequenceEqual(v.shape))
            throw new ArgumentException($"k {Shape(k)} and v {Shape(v)} must have the same shape");
        SameKind("attention", ("q", q), ("k", k), ("v", v));
    }

    /// <summary>
    /// One dtype and one device for every operand: libtorch's matmul throws c10::Error on a mismatch, and TorchSharp's
    /// matmul lets that escape the native boundary, which aborts the process.
    /// </summary>
    public static void SameKind(string operation, params (string Name, Tensor T)[] operands)
    {
        var (firstName, first) = operands[0];
        foreach (var (name, t) in operands.Skip(1))
        {
            if (t.dtype != first.dtype)
                throw new ArgumentException($"{operation}: {name} is {t.dtype} but {firstName} is {first.dtype}; all must share one dtype");
            if (t.device_type != first.device_type || t.device_index != first.device_index)
                throw new ArgumentException($"{operation}: {name} is on {t.device} but {firstName} is on {first.device}; all must share one device");
        }
    }

    public static string Shape(Tensor t) => "[" + string.Join(", ", t.shape) + "]";
}
