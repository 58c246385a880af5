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
    public Parameter? w;
    public Parameter? b;
    public readonly HookPoint hook_scale;
    public readonly HookPoint hook_normalized;

    internal Norm(string name, string prefix, DecoderConfig cfg, HookRegistry hooks) : base(name)
    {
        kind = cfg.normalization_type;
        eps = cfg.eps;
        if (kind is "LN" or "RMS") w = Init.Ones(cfg.d_model);
        if (kind is "LN") b = Init.Zeros(cfg.d_model);
        hook_scale = hooks.Add($"{prefix}.hook_scale");
        hook_normalized = hooks.Add($"{prefix}.hook_normalized");
        RegisterComponents();
    }

    /// <summary>x [batch, pos, d_model] → [batch, pos, d_model]</summary>
    public override Tensor forward(Tensor x)
    {
        if (kind == "none") return x;
        if (kind != "RMS") x = x.sub(x.mean([-1L], keepdim: true));
        var scale = hook_scale.Run(x.pow(2).mean([-1L], keepdim: true).add(eps).sqrt());   // [batch, pos, 1]
        var normalized = x.div(scale);
        if (w is not null) normalized = normalized.mul(w);
        if (b is not null) normalized = normalized.add(b);
        return hook_normalized.Run(normalized);
    }
}
