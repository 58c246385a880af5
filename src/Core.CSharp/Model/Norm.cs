using MechInterp.Hooks;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// LayerNorm in TransformerLens' variants: LN (w, b), LNPre (no weights, folded elsewhere),
/// RMS (w), none (identity). hook_scale [batch, pos, 1] is the divisor, hook_normalized the output.
/// </summary>
public sealed class Norm : nn.Module<Tensor, Tensor>
{
    private readonly string kind;
    private readonly double eps;
    private readonly bool batched;
    public Parameter? w;
    public Parameter? b;
    public readonly HookPoint hook_scale;
    public readonly HookPoint hook_normalized;

    internal Norm(string name, string prefix, DecoderConfig cfg, Init init, HookRegistry hooks) : base(name)
    {
        kind = cfg.normalization_type;
        eps = cfg.eps;
        batched = init.Batched;
        if (kind is "LN" or "RMS") w = init.Ones(cfg.d_model);
        if (kind is "LN") b = init.Zeros(cfg.d_model);
        hook_scale = hooks.Add($"{prefix}.hook_scale");
        hook_normalized = hooks.Add($"{prefix}.hook_normalized");
        RegisterComponents();
    }

    /// <summary>x [instance, batch, pos, d_model] → [instance, batch, pos, d_model]</summary>
    public override Tensor forward(Tensor x)
    {
        if (kind == "none") return x;
        // Nothing reads or replaces the scale: libtorch's fused layer_norm is one op forward and one backward
        // instead of nine and fifteen, which matters in small, overhead-bound models.
        if (kind != "RMS" && !hook_scale.IsActive)
        {
            var fused = nn.functional.layer_norm(x, [x.shape[^1]], eps: eps);
            if (w is not null) fused = fused.mul(Instanced.Broadcast(w, batched, x.dim()));
            if (b is not null) fused = fused.add(Instanced.Broadcast(b, batched, x.dim()));
            return hook_normalized.Run(fused);
        }
        if (kind != "RMS") x = x.sub(x.mean([-1L], keepdim: true));
        var scale = hook_scale.Run(x.pow(2).mean([-1L], keepdim: true).add(eps).sqrt());   // [instance, batch, pos, 1]
        var normalized = x.div(scale);
        if (w is not null) normalized = normalized.mul(Instanced.Broadcast(w, batched, x.dim()));
        if (b is not null) normalized = normalized.add(Instanced.Broadcast(b, batched, x.dim()));
        return hook_normalized.Run(normalized);
    }
}
