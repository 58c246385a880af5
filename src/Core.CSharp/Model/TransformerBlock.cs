using MechInterp.Hooks;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// One block: it reads the residual stream and writes two deltas into it.
/// resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).
/// In a plain decoder (config.residual false) each sublayer's output replaces the stream instead:
/// resid_mid = attn(ln1(resid_pre)); resid_post = mlp(ln2(resid_mid)).
/// </summary>
public sealed class TransformerBlock : nn.Module<Tensor, Tensor>
{
    public Norm ln1;
    public Attention attn;
    public Norm? ln2;
    public nn.Module<Tensor, Tensor>? mlp;   // Mlp or Moe; null when attn_only
    public readonly HookPoint hook_resid_pre, hook_attn_out, hook_resid_mid, hook_mlp_out, hook_resid_post;
    private readonly bool residual;

    internal TransformerBlock(int layer, DecoderConfig cfg, Init init, HookRegistry hooks) : base($"{layer}")
    {
        string p = $"blocks.{layer}";
        residual = cfg.residual;
        hook_resid_pre = hooks.Add(HookNames.ResidPre(layer));
        ln1 = new Norm("ln1", $"{p}.ln1", cfg, init, hooks);
        attn = new Attention($"{p}.attn", cfg, init, hooks);
        hook_attn_out = hooks.Add(HookNames.AttnOut(layer));
        if (cfg.attn_only)
        {
            // As TransformerLens: an attention-only block has no resid_mid, no mlp_out.
            hook_resid_mid = hooks.Inactive(HookNames.ResidMid(layer));
            hook_mlp_out = hooks.Inactive(HookNames.MlpOut(layer));
        }
        else
        {
            hook_resid_mid = hooks.Add(HookNames.ResidMid(layer));
            ln2 = new Norm("ln2", $"{p}.ln2", cfg, init, hooks);
            mlp = cfg.IsMoe ? new Moe($"{p}.mlp", cfg, init, hooks) : new Mlp($"{p}.mlp", cfg, init, hooks);
            hook_mlp_out = hooks.Add(HookNames.MlpOut(layer));
        }
        hook_resid_post = hooks.Add(HookNames.ResidPost(layer));
        RegisterComponents();
    }

    /// <summary>resid [instance, batch, pos, d_model] → resid [instance, batch, pos, d_model]</summary>
    public override Tensor forward(Tensor resid)
    {
        var residPre = hook_resid_pre.Run(resid);
        var attnOut = hook_attn_out.Run(attn.forward(ln1.forward(residPre)));
        var afterAttn = residual ? residPre.add(attnOut) : attnOut;
        if (mlp is null)
            return hook_resid_post.Run(afterAttn);
        var residMid = hook_resid_mid.Run(afterAttn);
        var mlpOut = hook_mlp_out.Run(mlp.forward(ln2!.forward(residMid)));
        return hook_resid_post.Run(residual ? residMid.add(mlpOut) : mlpOut);
    }
}
