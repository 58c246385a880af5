using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Circuits;

/// <summary>Which input of the later head reads the earlier head's output (A Mathematical Framework, Elhage et al. 2021).</summary>
public enum Composition { Q, K, V }

/// <summary>
/// Per-head circuits of an ordinary model as factored matrices, in the row-vector convention (x W): the OV circuit
/// W_V W_O [d_model, d_model] (what a head writes given what it attends to), the QK circuit W_Q W_Kᵀ
/// [d_model, d_model] (scores = x_q W_QK x_kᵀ, before the 1/√d_head), the full OV circuit W_E W_OV W_U
/// [d_vocab, d_vocab], and the scores read from them. Norms are not folded in: process the weights first
/// (<see cref="HookedTransformer.ProcessWeights"/>) for the circuits TransformerLens reads, as its docs advise.
/// </summary>
public static class HeadCircuits
{
    public static FactoredMatrix OV(HookedTransformer model, int layer, int head)
    {
        var attn = Attention(model, layer, head);
        return new(attn.W_V.detach()[head], attn.W_O.detach()[head]);                     // [d_model, d_head] · [d_head, d_model]
    }

    public static FactoredMatrix QK(HookedTransformer model, int layer, int head)
    {
        var attn = Attention(model, layer, head);
        return new(attn.W_Q.detach()[head], attn.W_K.detach()[head].t());                 // [d_model, d_head] · [d_head, d_model]
    }

    /// <summary>W_E W_V W_O W_U [d_vocab, d_vocab]: which token a head writes (as logits) for each token it attends to.</summary>
    public static FactoredMatrix FullOV(HookedTransformer model, int layer, int head)
    {
        var ov = OV(model, layer, head);
        return new(model.embed.W_E.detach().matmul(ov.A), ov.B.matmul(model.unembed.W_U.detach()));
    }

    /// <summary>
    /// Σ λ / Σ |λ| over the eigenvalues of the full OV circuit (real parts over magnitudes): near 1 when a head copies
    /// the tokens it attends to into the logits (positive eigenvalues), near −1 when it suppresses them.
    /// </summary>
    public static double CopyingScore(HookedTransformer model, int layer, int head)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var eig = FullOV(model, layer, head).Eigenvalues();
        double magnitude = eig.abs().sum().item<double>();
        return magnitude == 0 ? double.NaN : eig.real.sum().item<double>() / magnitude;
    }

    /// <summary>‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F): how much of what W_A writes W_B reads.</summary>
    public static double CompositionScore(FactoredMatrix first, FactoredMatrix second)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        double norms = first.Norm() * second.Norm();
        return norms == 0 ? double.NaN : first.Then(second).Norm() / norms;
    }

    /// <summary>
    /// How much head (laterLayer, laterHead) reads, through its query, key or value, what head (earlierLayer,
    /// earlierHead) writes: W_OV¹ W_QK² (Q), W_OV¹ (W_QK²)ᵀ (K), W_OV¹ W_OV² (V), as TransformerLens.
    /// </summary>
    public static double CompositionScore(HookedTransformer model, Composition kind, int earlierLayer, int earlierHead, int laterLayer, int laterHead)
    {
        if (earlierLayer >= laterLayer)
            throw new ArgumentException($"composition reads an earlier layer's output: layer {earlierLayer} is not before layer {laterLayer}");
        using var scope = NewDisposeScope();
        var ov = OV(model, earlierLayer, earlierHead);
        var second = kind switch
        {
            Composition.Q => QK(model, laterLayer, laterHead),
            Composition.K => QK(model, laterLayer, laterHead).T,
            Composition.V => OV(model, laterLayer, laterHead),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "composition is Q, K or V"),
        };
        return CompositionScore(ov, second);
    }

    /// <summary>Scores [earlier layer, earlier head, later layer, later head]; 0 where the later layer is not later.</summary>
    public static double[,,,] AllCompositionScores(HookedTransformer model, Composition kind)
    {
        int layers = model.Config.n_layers, heads = model.Config.n_heads;
        var scores = new double[layers, heads, layers, heads];
        for (int l1 = 0; l1 < layers; l1++)
            for (int h1 = 0; h1 < heads; h1++)
                for (int l2 = l1 + 1; l2 < layers; l2++)
                    for (int h2 = 0; h2 < heads; h2++)
                        scores[l1, h1, l2, h2] = CompositionScore(model, kind, l1, h1, l2, h2);
        return scores;
    }

    private static Model.Attention Attention(HookedTransformer model, int layer, int head)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model.IsBatched) throw new InvalidOperationException("circuits read one model's weights; take an instance out of the batched model first (Instance(i))");
        if (layer < 0 || layer >= model.Config.n_layers) throw new ArgumentOutOfRangeException(nameof(layer), layer, $"layer must be in [0, {model.Config.n_layers})");
        if (head < 0 || head >= model.Config.n_heads) throw new ArgumentOutOfRangeException(nameof(head), head, $"head must be in [0, {model.Config.n_heads})");
        return model.blocks[layer].attn;
    }
}
