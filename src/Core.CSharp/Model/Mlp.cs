using MechInterp.Hooks;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>The dense MLP: act(x W_in + b_in) W_out + b_out.</summary>
public sealed class Mlp : nn.Module<Tensor, Tensor>
{
    private readonly Func<Tensor, Tensor> act;
    private readonly bool batched;
    public Parameter W_in;    // [d_model, d_mlp]
    public Parameter b_in;    // [d_mlp]
    public Parameter W_out;   // [d_mlp, d_model]
    public Parameter b_out;   // [d_model]
    public readonly HookPoint hook_pre, hook_post;

    internal Mlp(string prefix, DecoderConfig cfg, Init init, HookRegistry hooks) : base("mlp")
    {
        act = Activations.Get(cfg.act_fn);
        batched = init.Batched;
        W_in = init.Normal(cfg.d_model, cfg.DMlp);
        b_in = init.Zeros(cfg.DMlp);
        W_out = init.Normal(cfg.DMlp, cfg.d_model);
        b_out = init.Zeros(cfg.d_model);
        hook_pre = hooks.Add($"{prefix}.hook_pre");
        hook_post = hooks.Add($"{prefix}.hook_post");
        RegisterComponents();
    }

    /// <summary>x [instance, batch, pos, d_model] → [instance, batch, pos, d_model]</summary>
    public override Tensor forward(Tensor x)
    {
        var pre = hook_pre.Run(Instanced.Linear(x, Instanced.Weight(W_in, batched), Instanced.Weight(b_in, batched)));   // [instance, batch, pos, d_mlp]
        var post = hook_post.Run(act(pre));                                                                              // [instance, batch, pos, d_mlp]
        return Instanced.Linear(post, Instanced.Weight(W_out, batched), Instanced.Weight(b_out, batched));
    }
}
