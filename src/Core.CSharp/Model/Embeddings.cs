using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>Token embedding: W_E [d_vocab, d_model] ([instance, d_vocab, d_model] in a batched model).</summary>
public sealed class Embed : nn.Module<Tensor, Tensor>
{
    private readonly bool batched;
    public Parameter W_E;

    internal Embed(DecoderConfig cfg, Init init) : base("embed")
    {
        batched = init.Batched;
        W_E = init.Normal(cfg.d_vocab, cfg.d_model);
        RegisterComponents();
    }

    /// <summary>tokens [instance, batch, pos] → [instance, batch, pos, d_model]</summary>
    public override Tensor forward(Tensor tokens)
    {
        long instances = tokens.shape[0], vocab = W_E.shape[^2], dModel = W_E.shape[^1];
        // Instance i's rows live at i·d_vocab .. of the flattened table: one lookup serves every instance.
        var ids = batched ? tokens.add(arange(instances).mul(vocab).view(instances, 1, 1)) : tokens;
        return W_E.reshape(-1, dModel).index_select(0, ids.reshape(-1)).view([.. tokens.shape, dModel]);
    }
}

/// <summary>Learned absolute positions: W_pos [n_ctx, d_model] ([instance, n_ctx, d_model] batched).</summary>
public sealed class PosEmbed : nn.Module<Tensor, Tensor>
{
    private readonly bool batched;
    public Parameter W_pos;

    internal PosEmbed(DecoderConfig cfg, Init init) : base("pos_embed")
    {
        batched = init.Batched;
        W_pos = init.Normal(cfg.n_ctx, cfg.d_model);
        RegisterComponents();
    }

    /// <summary>tokens [instance, batch, pos] → [instance, batch, pos, d_model] (the same rows for every batch entry)</summary>
    public override Tensor forward(Tensor tokens)
    {
        long pos = tokens.shape[2];
        var rows = Instanced.Weight(W_pos, batched).narrow(1, 0, pos);   // [instance, pos, d_model]
        return rows.unsqueeze(1).expand(-1, tokens.shape[1], -1, -1);
    }
}

/// <summary>Unembedding: W_U [d_model, d_vocab], b_U [d_vocab] (with a leading instance dimension batched).</summary>
public sealed class Unembed : nn.Module<Tensor, Tensor>
{
    private readonly bool batched;
    public Parameter W_U;
    public Parameter b_U;

    internal Unembed(DecoderConfig cfg, Init init) : base("unembed")
    {
        batched = init.Batched;
        W_U = init.Normal(cfg.d_model, cfg.d_vocab);
        b_U = init.Zeros(cfg.d_vocab);
        RegisterComponents();
    }

    /// <summary>resid [instance, batch, pos, d_model] → logits [instance, batch, pos, d_vocab]</summary>
    public override Tensor forward(Tensor resid) =>
        Instanced.Linear(resid, Instanced.Weight(W_U, batched), Instanced.Weight(b_U, batched));
}
