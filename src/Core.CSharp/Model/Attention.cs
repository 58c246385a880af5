using MechInterp.Hooks;
using MechInterp.Kernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// Causal multi-head self-attention with TransformerLens' parameter layout and hooks.
/// The kernel (native or managed) runs the softmax(q kᵀ / √d_head) v part; the pattern is
/// materialized only when a hook or the cache asks for it. Instances fold into the kernel's batch.
/// </summary>
public sealed class Attention : nn.Module<Tensor, Tensor>
{
    private readonly DecoderConfig cfg;
    private readonly bool batched;
    private readonly Rotary? rotary;
    public Parameter W_Q, W_K, W_V;   // [n_heads, d_model, d_head]
    public Parameter W_O;             // [n_heads, d_head, d_model]
    public Parameter b_Q, b_K, b_V;   // [n_heads, d_head]
    public Parameter b_O;             // [d_model]

    public readonly HookPoint hook_q, hook_k, hook_v, hook_rot_q, hook_rot_k;
    public readonly HookPoint hook_attn_scores, hook_pattern, hook_z, hook_result;

    internal Attention(string prefix, DecoderConfig cfg, Init init, HookRegistry hooks) : base("attn")
    {
        this.cfg = cfg;
        batched = init.Batched;
        int h = cfg.n_heads, d = cfg.d_model, e = cfg.DHead;
        W_Q = init.Normal(h, d, e);
        W_K = init.Normal(h, d, e);
        W_V = init.Normal(h, d, e);
        W_O = init.Normal(h, e, d);
        b_Q = init.Zeros(h, e);
        b_K = init.Zeros(h, e);
        b_V = init.Zeros(h, e);
        b_O = init.Zeros(d);
        hook_q = hooks.Add($"{prefix}.hook_q");
        hook_k = hooks.Add($"{prefix}.hook_k");
        hook_v = hooks.Add($"{prefix}.hook_v");
        bool isRotary = cfg.positional_embedding_type == "rotary";
        if (isRotary) rotary = new Rotary(cfg.RotaryDim);
        hook_rot_q = isRotary ? hooks.Add($"{prefix}.hook_rot_q") : hooks.Inactive($"{prefix}.hook_rot_q");
        hook_rot_k = isRotary ? hooks.Add($"{prefix}.hook_rot_k") : hooks.Inactive($"{prefix}.hook_rot_k");
        hook_attn_scores = hooks.Add($"{prefix}.hook_attn_scores");
        hook_pattern = hooks.Add($"{prefix}.hook_pattern");
        hook_z = hooks.Add($"{prefix}.hook_z");
        hook_result = cfg.use_attn_result ? hooks.Add($"{prefix}.hook_result") : hooks.Inactive($"{prefix}.hook_result");
        RegisterComponents();
    }

    /// <summary>x [instance, batch, pos, d_model] (the normalized residual) → attn_out [instance, batch, pos, d_model]</summary>
    public override Tensor forward(Tensor x)
    {
        long instances = x.shape[0], batch = x.shape[1], pos = x.shape[2];
        long heads = cfg.n_heads, dHead = cfg.DHead;
        var q = hook_q.Run(Project(x, W_Q, b_Q));   // [instance, batch, pos, head, d_head]
        var k = hook_k.Run(Project(x, W_K, b_K));   // [instance, batch, pos, head, d_head]
        var v = hook_v.Run(Project(x, W_V, b_V));   // [instance, batch, pos, head, d_head]
        bool stepwise = hook_attn_scores.HasReplacingHooks || hook_pattern.HasReplacingHooks;
        // With nothing on hook_rot_q / hook_rot_k the kernel rotates q and k as it packs them (no rotated copy).
        var fusedRotary = rotary is not null && !stepwise && !hook_rot_q.IsActive && !hook_rot_k.IsActive
            ? rotary.Tables(pos, x.dtype) : null;
        if (rotary is not null && fusedRotary is null)
        {
            q = hook_rot_q.Run(rotary.Apply(q));
            k = hook_rot_k.Run(rotary.Apply(k));
        }
        // The kernel's batch is instance × batch: attention never mixes sequences, so instances fold into it.
        Tensor Heads(Tensor t) => t.permute(0, 1, 3, 2, 4).reshape(instances * batch, heads, pos, dHead);   // [instance·batch, head, pos, d_head]
        var qh = Heads(q);
        var kh = Heads(k);
        var vh = Heads(v);

        var zh = stepwise ? Stepwise(qh, kh, vh, instances) : Fused(qh, kh, vh, instances, fusedRotary);   // [instance·batch, head, pos, d_head]
        var z = hook_z.Run(zh.view(instances, batch, heads, pos, dHead).permute(0, 1, 3, 2, 4));   // [instance, batch, pos, head, d_head]

        var wO = Instanced.Weight(W_O, batched);                                             // [instance, head, d_head, d_model]
        var bO = Instanced.Weight(b_O, batched);                                             // [instance, d_model]
        if (cfg.use_attn_result)
        {
            // Per-head outputs: z_h W_O[h] for every head, then their sum.
            var result = hook_result.Run(PerHead(z, wO));                                    // [instance, batch, pos, head, d_model]
            return result.sum(3).add(bO.view(instances, 1, 1, cfg.d_model));
        }
        return Instanced.Linear(z.reshape(instances, batch, pos, heads * dHead), wO.reshape(instances, heads * dHead, cfg.d_model), bO);
    }

    /// <summary>
    /// Each head's write into the stream, z_h W_O[h] (b_O excluded), from z [batch, pos, head, d_head] (a cached
    /// hook_z) → [batch, pos, head, d_model]: attn.hook_result without use_attn_result. Ordinary models only.
    /// </summary>
    public Tensor HeadResults(Tensor z)
    {
        if (batched) throw new InvalidOperationException("HeadResults reads one model's W_O; take the instance out of the batched model first (HookedTransformer.Instance)");
        if (z.dim() != 4 || z.shape[2] != cfg.n_heads || z.shape[3] != cfg.DHead)
            throw new ArgumentException($"z must be [batch, pos, n_heads = {cfg.n_heads}, d_head = {cfg.DHead}], got [{string.Join(", ", z.shape)}]");
        return PerHead(z.unsqueeze(0), Instanced.Weight(W_O, batched)).squeeze(0);
    }

    /// <summary>z [instance, batch, pos, head, d_head], W_O [instance, head, d_head, d_model] → [instance, batch, pos, head, d_model].</summary>
    private static Tensor PerHead(Tensor z, Tensor wO) => einsum("ibphe,ihed->ibphd", z, wO);

    /// <summary>x [instance, batch, pos, d_model] · W [head, d_model, d_head] + b → [instance, batch, pos, head, d_head], one GEMM per instance.</summary>
    private Tensor Project(Tensor x, Tensor w, Tensor b)
    {
        var wi = Instanced.Weight(w, batched);                                               // [instance, head, d_model, d_head]
        long instances = wi.shape[0], heads = wi.shape[1], dModel = wi.shape[2], dHead = wi.shape[3];
        var flat = wi.permute(0, 2, 1, 3).reshape(instances, dModel, heads * dHead);         // [instance, d_model, head·d_head]
        var bias = Instanced.Weight(b, batched).reshape(instances, heads * dHead);           // [instance, head·d_head]
        var y = Instanced.Linear(x, flat, bias);                                             // [instance, batch, pos, head·d_head]
        return y.view(x.shape[0], x.shape[1], x.shape[2], heads, dHead);
    }

    /// <summary>The kernel path; the scores and the pattern come back only when an observer (the cache) wants each.</summary>
    private Tensor Fused(Tensor q, Tensor k, Tensor v, long instances, RotaryTables? rotary)
    {
        var r = Kernel.Attention(q, k, v, causal: true, returnPattern: hook_pattern.IsActive, rotary: rotary,
                                 returnScores: hook_attn_scores.IsActive);
        if (r.Scores is not null) hook_attn_scores.Run(ByInstance(r.Scores, instances));
        if (r.Pattern is not null) hook_pattern.Run(ByInstance(r.Pattern, instances));
        return r.Z;
    }

    /// <summary>Materialized attention, so hooks can replace the scores or the pattern.</summary>
    private Tensor Stepwise(Tensor q, Tensor k, Tensor v, long instances)
    {
        var scores = hook_attn_scores.Run(ByInstance(ManagedAttention.Scores(q, k, causal: true), instances));   // [instance, batch, head, query, key]
        var pattern = hook_pattern.Run(scores.softmax(-1));                                                    // [instance, batch, head, query, key]
        return pattern.reshape(q.shape[0], q.shape[1], q.shape[2], k.shape[2]).matmul(v);                      // [instance·batch, head, query, d_head]
    }

    /// <summary>[instance·batch, head, query, key] → [instance, batch, head, query, key]</summary>
    private static Tensor ByInstance(Tensor t, long instances) =>
        t.view(instances, t.shape[0] / instances, t.shape[1], t.shape[2], t.shape[3]);
}
