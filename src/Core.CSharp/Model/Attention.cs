using MechInterp.Hooks;
using MechInterp.Kernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// Causal multi-head self-attention with TransformerLens' parameter layout and hooks.
/// The kernel (native or managed) runs the softmax(q kᵀ / √d_head) v part; the pattern is
/// materialized only when a hook or the cache asks for it.
/// </summary>
public sealed class Attention : nn.Module<Tensor, Tensor>
{
    private readonly DecoderConfig cfg;
    public Parameter W_Q, W_K, W_V;   // [n_heads, d_model, d_head]
    public Parameter W_O;             // [n_heads, d_head, d_model]
    public Parameter b_Q, b_K, b_V;   // [n_heads, d_head]
    public Parameter b_O;             // [d_model]

    public readonly HookPoint hook_q, hook_k, hook_v, hook_rot_q, hook_rot_k;
    public readonly HookPoint hook_attn_scores, hook_pattern, hook_z, hook_result;

    internal Attention(string prefix, DecoderConfig cfg, Init init, HookRegistry hooks) : base("attn")
    {
        this.cfg = cfg;
        int h = cfg.n_heads, d = cfg.d_model, e = cfg.DHead;
        W_Q = init.Normal(h, d, e);
        W_K = init.Normal(h, d, e);
        W_V = init.Normal(h, d, e);
        W_O = init.Normal(h, e, d);
        b_Q = Init.Zeros(h, e);
        b_K = Init.Zeros(h, e);
        b_V = Init.Zeros(h, e);
        b_O = Init.Zeros(d);
        hook_q = hooks.Add($"{prefix}.hook_q");
        hook_k = hooks.Add($"{prefix}.hook_k");
        hook_v = hooks.Add($"{prefix}.hook_v");
        bool rotary = cfg.positional_embedding_type == "rotary";
        hook_rot_q = rotary ? hooks.Add($"{prefix}.hook_rot_q") : new HookPoint($"{prefix}.hook_rot_q");
        hook_rot_k = rotary ? hooks.Add($"{prefix}.hook_rot_k") : new HookPoint($"{prefix}.hook_rot_k");
        hook_attn_scores = hooks.Add($"{prefix}.hook_attn_scores");
        hook_pattern = hooks.Add($"{prefix}.hook_pattern");
        hook_z = hooks.Add($"{prefix}.hook_z");
        hook_result = cfg.use_attn_result ? hooks.Add($"{prefix}.hook_result") : new HookPoint($"{prefix}.hook_result");
        RegisterComponents();
    }

    /// <summary>x [batch, pos, d_model] (the normalized residual) → attn_out [batch, pos, d_model]</summary>
    public override Tensor forward(Tensor x)
    {
        long batch = x.shape[0], pos = x.shape[1];
        var q = hook_q.Run(Project(x, W_Q, b_Q));   // [batch, pos, head, d_head]
        var k = hook_k.Run(Project(x, W_K, b_K));   // [batch, pos, head, d_head]
        var v = hook_v.Run(Project(x, W_V, b_V));   // [batch, pos, head, d_head]
        if (cfg.positional_embedding_type == "rotary")
        {
            q = hook_rot_q.Run(Rotary.Apply(q, cfg.RotaryDim));
            k = hook_rot_k.Run(Rotary.Apply(k, cfg.RotaryDim));
        }
        var qh = q.permute(0, 2, 1, 3).contiguous();   // [batch, head, pos, d_head]
        var kh = k.permute(0, 2, 1, 3).contiguous();
        var vh = v.permute(0, 2, 1, 3).contiguous();

        var zh = hook_attn_scores.HasReplacingHooks || hook_pattern.HasReplacingHooks
            ? Stepwise(qh, kh, vh)
            : Fused(qh, kh, vh);                        // [batch, head, pos, d_head]
        var z = hook_z.Run(zh.permute(0, 2, 1, 3));     // [batch, pos, head, d_head]

        if (cfg.use_attn_result)
        {
            // Per-head outputs: z_h W_O[h] for every head, then their sum.
            var result = hook_result.Run(einsum("bphe,hed->bphd", z, W_O));   // [batch, pos, head, d_model]
            return result.sum(2).add(b_O);
        }
        long heads = cfg.n_heads, dHead = cfg.DHead;
        return z.reshape(batch, pos, heads * dHead).matmul(W_O.reshape(heads * dHead, cfg.d_model)).add(b_O);
    }

    /// <summary>x [batch, pos, d_model] · W [head, d_model, d_head] + b → [batch, pos, head, d_head], as one GEMM.</summary>
    private Tensor Project(Tensor x, Tensor w, Tensor b)
    {
        long heads = w.shape[0], dModel = w.shape[1], dHead = w.shape[2];
        var flat = w.permute(1, 0, 2).reshape(dModel, heads * dHead);   // [d_model, head * d_head]
        return x.matmul(flat).view(x.shape[0], x.shape[1], heads, dHead).add(b);
    }

    /// <summary>The kernel path; scores and pattern come back only when an observer (the cache) wants them.</summary>
    private Tensor Fused(Tensor q, Tensor k, Tensor v)
    {
        bool wantPattern = hook_attn_scores.IsActive || hook_pattern.IsActive;
        var r = Kernel.Attention(q, k, v, causal: true, returnPattern: wantPattern);
        if (wantPattern)
        {
            hook_attn_scores.Run(r.Scores!);
            hook_pattern.Run(r.Pattern!);
        }
        return r.Z;
    }

    /// <summary>Materialized attention, so hooks can replace the scores or the pattern.</summary>
    private Tensor Stepwise(Tensor q, Tensor k, Tensor v)
    {
        var scores = hook_attn_scores.Run(ManagedAttention.Scores(q, k, causal: true));   // [batch, head, query, key]
        var pattern = hook_pattern.Run(scores.softmax(-1));                              // [batch, head, query, key]
        return pattern.matmul(v);                                                          // [batch, head, query, d_head]
    }
}
