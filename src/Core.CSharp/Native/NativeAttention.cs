using MechInterp.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Native;

/// <summary>The native fused attention behind <see cref="Kernel.Attention"/>.</summary>
internal static class NativeAttention
{
    public static AttentionResult Forward(Tensor q, Tensor k, Tensor v, bool causal, bool returnPattern)
    {
        NativeTensors.RequireFloat32Cpu(q, "q");
        NativeTensors.RequireFloat32Cpu(k, "k");
        NativeTensors.RequireFloat32Cpu(v, "v");
        // Inference (no grad wanted) skips the autograd node and its bookkeeping.
        bool wantsGrad = is_grad_enabled() && (q.requires_grad || k.requires_grad || v.requires_grad);
        var outputs = wantsGrad ? AttentionFunction.apply(q, k, v, causal, returnPattern) : AttentionFunction.Compute(q, k, v, causal, returnPattern).Outputs;
        return returnPattern
            ? new AttentionResult(outputs[0], outputs[1], outputs[2])
            : new AttentionResult(outputs[0], null, null);
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
        bool causal = (bool)vars[3], returnPattern = (bool)vars[4];
        var (outputs, saved) = Compute((Tensor)vars[0], (Tensor)vars[1], (Tensor)vars[2], causal, returnPattern);
        ctx.save_data("causal", causal);
        ctx.save_data("returnPattern", returnPattern);
        // Unused output gradients stay undefined instead of being materialized as [b, h, q, k] zeros.
        ctx.set_materialize_grads(false);
        ctx.save_for_backward(saved);
        return outputs;
    }

    /// <summary>The kernel call: outputs [z] or [z, scores, pattern], and what the backward needs.</summary>
    public static (List<Tensor> Outputs, List<Tensor> Saved) Compute(Tensor query, Tensor key, Tensor value, bool causal, bool returnPattern)
    {
        var (q, k, v) = (query.contiguous(), key.contiguous(), value.contiguous());
        long batch = q.shape[0], heads = q.shape[1], tq = q.shape[2], tk = k.shape[2], dHead = q.shape[3];
        var z = empty_like(q);                                    // [batch, head, query, d_head]
        var lse = empty(batch, heads, tq);                        // [batch, head, query]
        Tensor? scores = returnPattern ? empty(batch, heads, tq, tk) : null;    // [batch, head, query, key]
        Tensor? pattern = returnPattern ? empty(batch, heads, tq, tk) : null;   // [batch, head, query, key]
        if (q.numel() > 0 && k.numel() > 0)
            Ensure.Ok(NativeMethods.mi_attention_forward_f32(NativeTensors.Ptr(q), NativeTensors.Ptr(k), NativeTensors.Ptr(v),
                          batch, heads, tq, tk, dHead, causal ? 1 : 0, NativeTensors.Ptr(z), NativeTensors.Ptr(lse),
                          scores is null ? null : NativeTensors.Ptr(scores), pattern is null ? null : NativeTensors.Ptr(pattern)),
                      nameof(NativeMethods.mi_attention_forward_f32));
        return (returnPattern ? [z, scores!, pattern!] : [z], returnPattern ? [q, k, v, z, lse, pattern!] : [q, k, v, z, lse]);
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads)
    {
        var saved = ctx.get_saved_variables();
        Tensor q = saved[0], k = saved[1], v = saved[2], z = saved[3], lse = saved[4];
        bool causal = (bool)ctx.get_data("causal"), returnPattern = (bool)ctx.get_data("returnPattern");
        long batch = q.shape[0], heads = q.shape[1], tq = q.shape[2], tk = k.shape[2], dHead = q.shape[3];

        using var dz = Defined(grads[0]) ? grads[0].contiguous() : zeros_like(z);
        var dq = empty_like(q);
        var dk = empty_like(k);
        var dv = empty_like(v);
        if (q.numel() > 0 && k.numel() > 0)
            Ensure.Ok(NativeMethods.mi_attention_backward_f32(NativeTensors.Ptr(q), NativeTensors.Ptr(k), NativeTensors.Ptr(v),
                          NativeTensors.Ptr(z), NativeTensors.Ptr(lse), NativeTensors.Ptr(dz), batch, heads, tq, tk, dHead,
                          causal ? 1 : 0, NativeTensors.Ptr(dq), NativeTensors.Ptr(dk), NativeTensors.Ptr(dv)),
                      nameof(NativeMethods.mi_attention_backward_f32));

        if (returnPattern && (Defined(grads[1]) || Defined(grads[2])))
        {
            using var scope = NewDisposeScope();
            var pattern = saved[5];
            // Gradient on the scaled scores from the returned scores and pattern (softmax backward).
            var dScores = zeros_like(pattern);                                  // [batch, head, query, key]
            if (Defined(grads[2]))
                dScores = dScores.add(pattern.mul(grads[2].sub(grads[2].mul(pattern).sum(-1, keepdim: true))));
            if (Defined(grads[1]))
                dScores = causal ? dScores.add(grads[1].masked_fill(CausalMask(tq, tk), 0.0)) : dScores.add(grads[1]);
            double scale = 1.0 / Math.Sqrt(dHead);
            dq.add_(dScores.matmul(k).mul(scale));                             // [batch, head, query, d_head]
            dk.add_(dScores.transpose(-2, -1).matmul(q).mul(scale));           // [batch, head, key, d_head]
        }
        return [dq, dk, dv, null!, null!];
    }

    private static bool Defined(Tensor? t) => t is not null && !t.IsInvalid;

    /// <summary>True where a key is masked: key j > query i + kv_len - q_len (the kernel's convention).</summary>
    private static Tensor CausalMask(long tq, long tk) => ones(tq, tk, dtype: ScalarType.Bool).triu(1 + tk - tq);
}
