using MechInterp.Hooks;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// LayerNorm in TransformerLens' variants: LN (w, b), LNPre (no weights, folded elsewhere),
/// RMS (w), RMSPre (no weight, folded elsewhere), none (identity). hook_scale [batch, pos, 1] is the divisor, hook_normalized the output.
/// </summary>
public sealed class Norm : nn.Module<Tensor, Tensor>
{
    private readonly string kind;
    private readonly bool rms;
    private readonly double eps;
    private readonly long dModel;
    private readonly bool batched;
    public Parameter? w;
    public Parameter? b;
    public readonly HookPoint hook_scale;
    public readonly HookPoint hook_normalized;

    internal Norm(string name, string prefix, DecoderConfig cfg, Init init, HookRegistry hooks) : base(name)
    {
        kind = cfg.normalization_type;
        rms = kind is "RMS" or "RMSPre";
        eps = cfg.eps;
        dModel = cfg.d_model;
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
        if (!rms && !hook_scale.IsActive)
            return hook_normalized.Run(Affine(nn.functional.layer_norm(x, [x.shape[^1]], eps: eps), x.dim()));
        if (!rms) x = x.sub(x.mean([-1L], keepdim: true));
        var scale = hook_scale.Run(x.pow(2).mean([-1L], keepdim: true).add(eps).sqrt());   // [instance, batch, pos, 1]
        var normalized = Affine(x.div(scale), x.dim());
        return hook_normalized.Run(normalized);
    }

    private Tensor Affine(Tensor normalized, long dims)
    {
        if (w is not null) normalized = normalized.mul(Instanced.Broadcast(w, batched, dims));
        if (b is not null) normalized = normalized.add(Instanced.Broadcast(b, batched, dims));
        return normalized;
    }

    /// <summary>
    /// This norm applied to any x [.., d_model] with its own statistics, weight and bias, no hooks: what the
    /// model would compute had its stream been x there (the logit lens). Ordinary models only.
    /// </summary>
    public Tensor Normalize(Tensor x)
    {
        RequireOrdinary(x, nameof(Normalize));
        if (kind == "none") return x;
        if (!rms) x = x.sub(x.mean([-1L], keepdim: true));
        return Affine(x.div(x.pow(2).mean([-1L], keepdim: true).add(eps).sqrt()), x.dim());
    }

    /// <summary>
    /// x [.., d_model] centred as this norm centres (LN, LNPre) and divided by a given scale [.., 1] (a cached
    /// hook_scale, held constant), weight and bias not applied: TransformerLens's apply_ln_to_stack, under which
    /// the components of a stream add up to its normalized value. Ordinary models only.
    /// </summary>
    public Tensor ApplyFrozenScale(Tensor x, Tensor scale)
    {
        RequireOrdinary(x, nameof(ApplyFrozenScale));
        if (kind == "none") return x;
        return (rms ? x : x.sub(x.mean([-1L], keepdim: true))).div(scale);
    }

    private void RequireOrdinary(Tensor x, string what)
    {
        if (batched) throw new InvalidOperationException($"{what} applies one model's norm; take the instance out of the batched model first (HookedTransformer.Instance)");
        if (x.dim() < 1 || x.shape[^1] != dModel)
            throw new ArgumentException($"x must be [.., d_model = {dModel}], got [{string.Join(", ", x.shape)}]");
    }
}
