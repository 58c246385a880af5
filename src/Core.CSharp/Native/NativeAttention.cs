using MechInterp.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Native;

/// <summary>The native fused attention behind <see cref="Kernel.Attention"/>.</summary>
internal static class NativeAttention
{
    public static AttentionResult Forward(Tensor q, Tensor k, Tensor v, bool causal, AttentionOutputs wanted, RotaryTables? rotary = null)
    {
        NativeTensors.RequireFloat32Cpu(q, "q");
        NativeTensors.RequireFloat32Cpu(k, "k");
        NativeTensors.RequireFloat32Cpu(v, "v");
        Tensor? cos = null, sin = null;
        if (rotary is not null)
        {
            var first = rotary.First(k.shape[2]);
            NativeTensors.RequireFloat32Cpu(first.Cos, "rotary cos");
            NativeTensors.RequireFloat32Cpu(first.Sin, "rotary sin");
            (cos, sin) = (first.Cos.contiguous(), first.Sin.contiguous());
        }
        // Inference (no grad wanted) skips the autograd node and its bookkeeping.
        bool wantsGrad = is_grad_enabled() && (q.requires_grad || k.requires_grad || v.requires_grad);
        var outputs = wantsGrad
            ? AttentionFunction.apply(q, k, v, causal, wanted.Scores, wanted.Pattern, cos!, sin!)
            : AttentionFunction.Compute(q, k, v, causal, wanted, cos, sin).Outputs;
        // outputs: [z], then scores and pattern, each when wanted, in that order.
        return new AttentionResult(outputs[0], wanted.Scores ? outputs[1] : null, wanted.Pattern ? outputs[^1] : null);
    }
}

/// <summary>
/// z (and, when asked, scores and pattern) from the native kernel. The backward recomputes the
/// pattern from the saved log-sum-exp; gradients that reach the returned scores or pattern (a hook
/// that reads them into a loss) flow back to q and k as well.
/// </summary>
internal sealed unsafe class AttentionFunction : autograd.MultiTensorFunction<AttentionFunction>
{
    public override string Name => "MechInterpNativeAttention";

    public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
    {
        bool causal = (bool)vars[3];
        var wanted = new AttentionOutputs((bool)vars[4], (bool)vars[5]);
        var (cos, sin) = (vars[6] as Tensor, vars[7] as Tensor);
        var (outputs, saved) = Compute((Tensor)vars[0], (Tensor)vars[1], (Tensor)vars[2], causal, wanted, cos, sin);
        ctx.save_data("causal", causal);
        ctx.save_data("scores", wanted.Scores);
        ctx.save_data("pattern", wanted.Pattern);
        ctx.save_data("rotary", cos is not null);
        if (cos is not null) saved.AddRange([cos, sin!]);
        // Unused output gradients stay undefined instead of being materialized as [b, h, q, k] zeros.
        ctx.set_materialize_grads(false);
        ctx.save_for_backward(saved);
        return outputs;
    }

    /// <summary>
    /// The kernel call: outputs [z], then scores and pattern when wanted, and what the backward needs (the pattern
    /// too, when returned, for the gradient that reaches it). cos and sin (both or neither, contiguous
    /// [kv_len, rotary_dim]) make it the rotary kernel.
    /// </summary>
    public static (List<Tensor> Outputs, List<Tensor> Saved) Compute(Tensor query, Tensor key, Tensor value, bool causal, AttentionOutputs wanted,
                                                                     Tensor? cos = null, Tensor? sin = null)
    {
        var (q, k, v) = (query.contiguous(), key.contiguous(), value.contiguous());
        long batch = q.shape[0], heads = q.shape[1], tq = q.shape[2], tk = k.shape[2], dHead = q.shape[3];
        var z = empty_like(q);                                    // [batch, head, query, d_head]
        var lse = empty(batch, heads, tq);                        // [batch, head, query]
        Tensor? scores = wanted.Scores ? empty(batch, heads, tq, tk) : null;    // [batch, head, query, key]
        Tensor? pattern = wanted.Pattern ? empty(batch, heads, tq, tk) : null;  // [batch, head, query, key]
        float* scoresPtr = scores is null ? null : NativeTensors.Ptr(scores), patternPtr = pattern is null ? null : NativeTensors.Ptr(pattern);
        if (q.numel() > 0 && k.numel() > 0)
        {
            if (cos is null)
                Ensure.Ok(NativeMethods.mi_attention_forward_f32(NativeTensors.Ptr(q), NativeTensors.Ptr(k), NativeTensors.Ptr(v),
                              batch, heads, tq, tk, dHead, causal ? 1 : 0, NativeTensors.Ptr(z), NativeTensors.Ptr(lse), scoresPtr, patternPtr),
                          nameof(NativeMethods.mi_attention_forward_f32));
            else
                Ensure.Ok(NativeMethods.mi_attention_rotary_forward_f32(NativeTensors.Ptr(q), NativeTensors.Ptr(k), NativeTensors.Ptr(v),
                              batch, heads, tq, tk, dHead, causal ? 1 : 0, NativeTensors.Ptr(cos), NativeTensors.Ptr(sin!), cos.shape[1],
                              NativeTensors.Ptr(z), NativeTensors.Ptr(lse), scoresPtr, patternPtr),
                          nameof(NativeMethods.mi_attention_rotary_forward_f32));
        }
        List<Tensor> outputs = [z], saved = [q, k, v, z, lse];
        if (scores is not null) outputs.Add(scores);
        if (pattern is not null)
        {
            outputs.Add(pattern);
            saved.Add(pattern);
        }
        return (outputs, saved);
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads)
    {
        var saved = ctx.get_saved_variables();
        Tensor q = saved[0], k = saved[1], v = saved[2], z = saved[3], lse = saved[4];
        bool causal = (bool)ctx.get_data("causal"), rotary = (bool)ctx.get_data("rotary");
        var wanted = new AttentionOutputs((bool)ctx.get_data("scores"), (bool)ctx.get_data("pattern"));
        // grads follows the outputs: z, then scores and pattern when they were returned.
        Tensor? dScoresOut = wanted.Scores && Defined(grads[1]) ? grads[1] : null;
        Tensor? dPatternOut = wanted.Pattern && Defined(grads[^1]) ? grads[^1] : null;
        Tensor? cos = rotary ? saved[^2] : null, sin = rotary ? saved[^1] : null;
        long batch = q.shape[0], heads = q.shape[1], tq = q.shape[2], tk = k.shape[2], dHead = q.shape[3];

        using var dz = Defined(grads[0]) ? grads[0].contiguous() : zeros_like(z);
        var dq = empty_like(q);
        var dk = empty_like(k);
        var dv = empty_like(v);
        if (q.numel() > 0 && k.numel() > 0)
        {
            if (cos is null)
                Ensure.Ok(NativeMethods.mi_attention_backward_f32(NativeTensors.Ptr(q), NativeTensors.Ptr(k), NativeTensors.Ptr(v),
                              NativeTensors.Ptr(z), NativeTensors.Ptr(lse), NativeTensors.Ptr(dz), batch, heads, tq, tk, dHead,
                              causal ? 1 : 0, NativeTensors.Ptr(dq), NativeTensors.Ptr(dk), NativeTensors.Ptr(dv)),
                          nameof(NativeMethods.mi_attention_backward_f32));
            else
                Ensure.Ok(NativeMethods.mi_attention_rotary_backward_f32(NativeTensors.Ptr(q), NativeTensors.Ptr(k), NativeTensors.Ptr(v),
                              NativeTensors.Ptr(z), NativeTensors.Ptr(lse), NativeTensors.Ptr(dz), batch, heads, tq, tk, dHead,
                              causal ? 1 : 0, NativeTensors.Ptr(cos), NativeTensors.Ptr(sin!), cos.shape[1],
                              NativeTensors.Ptr(dq), NativeTensors.Ptr(dk), NativeTensors.Ptr(dv)),
                          nameof(NativeMethods.mi_attention_rotary_backward_f32));
        }

        if (dScoresOut is not null || dPatternOut is not null)
        {
            using var scope = NewDisposeScope();
            // Gradient on the scaled scores from the returned scores and pattern (softmax backward).
            var dScores = zeros(batch, heads, tq, tk);                          // [batch, head, query, key]
            if (dPatternOut is not null)
            {
                var pattern = saved[5];
                dScores = dScores.add(pattern.mul(dPatternOut.sub(dPatternOut.mul(pattern).sum(-1, keepdim: true))));
            }
            if (dScoresOut is not null)
                dScores = causal ? dScores.add(dScoresOut.masked_fill(CausalMask(tq, tk), 0.0)) : dScores.add(dScoresOut);
            double scale = 1.0 / Math.Sqrt(dHead);
            // The scores came from the rotated q and k: differentiate there, then take the gradient back through the rotation.
            var tables = rotary ? new RotaryTables(cos!, sin!) : null;
            var (qr, kr) = tables is null ? (q, k) : (tables.Apply(q, tk - tq), tables.Apply(k, 0));
            var dqr = dScores.matmul(kr).mul(scale);                            // [batch, head, query, d_head]
            var dkr = dScores.transpose(-2, -1).matmul(qr).mul(scale);          // [batch, head, key, d_head]
            dq.add_(tables is null ? dqr : tables.ApplyTransposed(dqr, tk - tq));
            dk.add_(tables is null ? dkr : tables.ApplyTransposed(dkr, 0));
        }
        return [dq, dk, dv, null!, null!, null!, null!, null!];
    }

    private static bool Defined(Tensor? t) => t is not null && !t.IsInvalid;

    /// <summary>True where a key is masked: key j > query i + kv_len - q_len (the kernel's convention).</summary>
    private static Tensor CausalMask(long tq, long tk) => ones(tq, tk, dtype: ScalarType.Bool).triu(1 + tk - tq);
}
