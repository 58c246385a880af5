using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// TransformerLens's weight processing (HookedTransformer.process_weights_): rewrites the weights so that the
/// model computes the same function while its parts read more simply. Each step and what it leaves:
/// <list type="bullet">
/// <item>fold_ln: each norm's weight (and LN's bias) moves into the weights (and biases) that read the norm's output
/// (W_Q, W_K, W_V of ln1; W_in, or the router and experts, of ln2; W_U of ln_final); the norms become LNPre / RMSPre.
/// With LN the reading weights are then centred, mean 0 over d_model (they read a centred vector). Logits unchanged.</item>
/// <item>center_writing_weights: every weight and bias that writes into the residual stream (W_E, W_pos, W_O, b_O,
/// W_out, b_out) has mean 0 over d_model; needs LN or LNPre, whose centring makes the removed means invisible.
/// Logits unchanged; the stream's hooks now hold its centred value.</item>
/// <item>center_unembed: W_U and b_U have mean 0 over the vocabulary. Logits shift by one constant a position, so
/// log-probabilities and every logit difference are unchanged.</item>
/// <item>fold_value_biases: b_V is 0 and its effect (a pattern row sums to 1, so each head adds b_V[h] W_O[h]) is in
/// b_O. Logits unchanged; hook_v and hook_z lose the bias.</item>
/// </list>
/// Works on batched models too (every mean is over the named axis of each instance).
/// </summary>
public static class WeightProcessing
{
    /// <summary>
    /// A new model of the processed weights and the same tokenizer (the given one is unchanged), with normalization_type LN → LNPre and
    /// RMS → RMSPre when <paramref name="foldLn"/> folded it. A step the configuration does not define is an error
    /// naming why (centring under RMS or no norm; folding LN into mixture-of-experts blocks, whose router has no bias).
    /// </summary>
    public static HookedTransformer Process(HookedTransformer model, bool foldLn = true, bool centerWritingWeights = true,
                                            bool centerUnembed = true, bool foldValueBiases = true)
    {
        ArgumentNullException.ThrowIfNull(model);
        var cfg = model.Config;
        string norm = cfg.normalization_type;
        bool folds = foldLn && norm is "LN" or "RMS";
        if (folds && norm == "LN" && cfg.IsMoe)
            throw new ArgumentException(
                $"fold_ln is not defined for mixture-of-experts blocks under LN: ln2's bias would go into the router, which has no bias " +
                $"(n_experts = {cfg.n_experts}); process with foldLn: false, or use RMS");
        bool centredReaders = (folds ? (norm == "LN" ? "LNPre" : "RMSPre") : norm) is "LN" or "LNPre";
        if (centerWritingWeights && !centredReaders)
            throw new ArgumentException(
                $"center_writing_weights needs every reader of the residual stream to centre it (normalization_type LN or LNPre), " +
                $"got '{norm}'; process with centerWritingWeights: false");

        var w = new Dictionary<string, Tensor>();
        using (no_grad())
        {
            foreach (var (name, p) in model.StateDict()) w[name] = p.detach().clone();
            for (int l = 0; l < cfg.n_layers; l++)
            {
                string b = $"blocks.{l}";
                if (folds)
                {
                    var (lnW, lnB) = TakeNorm(w, $"{b}.ln1");
                    foreach (var m in new[] { "Q", "K", "V" })
                        Fold(w, $"{b}.attn.W_{m}", $"{b}.attn.b_{m}", lnW, lnB, "...d,...hde->...he", centre: norm == "LN", scale: lnW.unsqueeze(-1).unsqueeze(-3));
                    if (!cfg.attn_only)
                    {
                        (lnW, lnB) = TakeNorm(w, $"{b}.ln2");
                        if (cfg.IsMoe)
                        {
                            // RMS only (LN rejected above): weights fold, there is no bias to carry.
                            Fold(w, $"{b}.mlp.W_gate", null, lnW, null, "", centre: false, scale: lnW.unsqueeze(-1));
                            Fold(w, $"{b}.mlp.W_in", null, lnW, null, "", centre: false, scale: lnW.unsqueeze(-1).unsqueeze(-3));
                        }
                        else Fold(w, $"{b}.mlp.W_in", $"{b}.mlp.b_in", lnW, lnB, "...d,...df->...f", centre: norm == "LN", scale: lnW.unsqueeze(-1));
                    }
                }
                if (centerWritingWeights)
                {
                    CentreLast(w, $"{b}.attn.W_O");
                    CentreLast(w, $"{b}.attn.b_O");
                    if (!cfg.attn_only)
                    {
                        CentreLast(w, $"{b}.mlp.W_out");
                        CentreLast(w, $"{b}.mlp.b_out");
                    }
                }
                if (foldValueBiases)
                {
                    var bV = w[$"{b}.attn.b_V"];
                    w[$"{b}.attn.b_O"] = w[$"{b}.attn.b_O"].add(einsum("...he,...hed->...d", bV, w[$"{b}.attn.W_O"]));
                    w[$"{b}.attn.b_V"] = zeros_like(bV);
                }
            }
            if (folds)
            {
                var (lnW, lnB) = TakeNorm(w, "ln_final");
                Fold(w, "unembed.W_U", "unembed.b_U", lnW, lnB, "...d,...dv->...v", centre: norm == "LN", scale: lnW.unsqueeze(-1));
            }
            if (centerWritingWeights)
            {
                CentreLast(w, "embed.W_E");
                if (w.ContainsKey("pos_embed.W_pos")) CentreLast(w, "pos_embed.W_pos");
            }
            if (centerUnembed)
            {
                CentreLast(w, "unembed.W_U");
                CentreLast(w, "unembed.b_U");
            }
        }

        var processed = HookedTransformer.Create(folds ? cfg with { normalization_type = norm == "LN" ? "LNPre" : "RMSPre" } : cfg,
                                                 model.IsBatched ? [.. model.Seeds] : null);
        var like = model.embed.W_E;
        if (like.dtype != ScalarType.Float32 || like.device_type != DeviceType.CPU) processed.to(like.device).to(like.dtype);
        using (no_grad())
        {
            var names = processed.named_parameters().Select(p => p.name).ToHashSet();
            if (!names.SetEquals(w.Keys))
                throw new InvalidOperationException($"weight processing left [{string.Join(", ", w.Keys.Except(names))}] and lacks [{string.Join(", ", names.Except(w.Keys))}]");
            foreach (var (name, p) in processed.named_parameters()) p.copy_(w[name]);
        }
        foreach (var t in w.Values) t.Dispose();
        processed.Tokenizer = model.Tokenizer;
        return processed;
    }

    /// <summary>Removes a norm's weight and bias (null when it has none) from the weights.</summary>
    private static (Tensor W, Tensor? B) TakeNorm(Dictionary<string, Tensor> w, string norm)
    {
        var weight = w[$"{norm}.w"];
        w.Remove($"{norm}.w");
        w.Remove($"{norm}.b", out var bias);
        return (weight, bias);
    }

    /// <summary>
    /// A reader of norm(x) · lnW + lnB: its weight scaled by lnW along d_model (<paramref name="scale"/> is lnW shaped
    /// to broadcast), lnB · W added to its bias, and the weight centred over d_model (axis −2) when the norm centres.
    /// </summary>
    private static void Fold(Dictionary<string, Tensor> w, string weight, string? bias, Tensor lnW, Tensor? lnB, string biasEquation, bool centre, Tensor scale)
    {
        var original = w[weight];
        if (bias is not null && lnB is not null) w[bias] = w[bias].add(einsum(biasEquation, lnB, original));
        var folded = original.mul(scale);
        w[weight] = centre ? folded.sub(folded.mean([-2L], keepdim: true)) : folded;
    }

    private static void CentreLast(Dictionary<string, Tensor> w, string name) =>
        w[name] = w[name].sub(w[name].mean([-1L], keepdim: true));
}
