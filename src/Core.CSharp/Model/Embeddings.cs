using MechInterp.Hooks;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>Token embedding: W_E [d_vocab, d_model].</summary>
public sealed class Embed : nn.Module<Tensor, Tensor>
{
    public Parameter W_E;

    internal Embed(DecoderConfig cfg, Init init) : base("embed")
    {
        W_E = init.Normal(cfg.d_vocab, cfg.d_model);
        RegisterComponents();
    }

    /// <summary>tokens [batch, pos] → [batch, pos, d_model]</summary>
    public override Tensor forward(Tensor tokens) =>
        W_E.index_select(0, tokens.reshape(-1)).view(tokens.shape[0], tokens.shape[1], -1);
}

/// <summary>Learned absolute positions: W_pos [n_ctx, d_model].</summary>
public sealed class PosEmbed : nn.Module<Tensor, Tensor>
{
    public Parameter W_pos;

    internal PosEmbed(DecoderConfig cfg, Init init) : base("pos_embed")
    {
        W_pos = init.Normal(cfg.n_ctx, cfg.d_model);
        RegisterComponents();
    }

    /// <summary>tokens [batch, pos] → [batch, pos, d_model] (the same rows for every batch entry)</summary>
    public override Tensor forward(Tensor tokens) =>
        W_pos.narrow(0, 0, tokens.shape[1]).unsqueeze(0).expand(tokens.shape[0], -1, -1);
}

/// <summary>Unembedding: W_U [d_model, d_vocab], b_U [d_vocab].</summary>
public sealed class Unembed : nn.Module<Tensor, Tensor>
{
    public Parameter W_U;
    public Parameter b_U;

    internal Unembed(DecoderConfig cfg, Init init) : base("unembed")
    {
        W_U = init.Normal(cfg.d_model, cfg.d_vocab);
        b_U = Init.Zeros(cfg.d_vocab);
        RegisterComponents();
    }

    /// <summary>resid [batch, pos, d_model] → logits [batch, pos, d_vocab]</summary>
    public override Tensor forward(Tensor resid) => resid.matmul(W_U).add(b_U);
}
