using MechInterp.Hooks;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>The dense MLP: act(x W_in + b_in) W_out + b_out.</summary>
public sealed class Mlp : nn.Module<Tensor, Tensor>
{
    private readonly Func<Tensor, Tensor> act;
    public Parameter W_in;    // [d_model, d_mlp]
    public Parameter b_in;    // [d_mlp]
    public Parameter W_out;   // [d_mlp, d_model]
    public Parameter b_out;   // [d_model]
    public readonly HookPoint hook_pre, hook_post;

    internal Mlp(string prefix, DecoderConfig cfg, Init init, HookRegistry hooks) : base("mlp")
    {
        act = Activations.Get(cfg.act_fn);
        W_in = init.Normal(cfg.d_model, cfg.DMlp);
        b_in = Init.Zeros(cfg.DMlp);
        W_out = init.Normal(cfg.DMlp, cfg.d_model);
        b_out = Init.Zeros(cfg.d_model);
        hook_pre = hooks.Add($"{prefix}.hook_pre");
        hook_post = hooks.Add($"{prefix}.hook_post");
        RegisterComponents();
    }

    /// <summary>x [batch, pos, d_model] → [batch, pos, d_model]</summary>
    public override Tensor forward(Tensor x)
    {
        var pre = hook_pre.Run(x.matmul(W_in).add(b_in));   // [batch, pos, d_mlp]
        var post = hook_post.Run(act(pre));                // [batch, pos, d_mlp]
        return post.matmul(W_out).add(b_out);
    }
}
