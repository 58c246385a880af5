using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Hooks;

/// <summary>Labelled slices of the residual stream: Stack is [component, ..activation shape], one label a component.</summary>
public sealed record ResidualComponents(string[] Labels, Tensor Stack);

/// <summary>
/// TransformerLens's cache helpers (stack_activation, decompose_resid, accumulated_resid, apply_ln_to_stack) on an
/// <see cref="ActivationCache"/> and the model that filled it: the one implementation, which Analysis's
/// Residual.Decomposition calls. Cache what <see cref="ResidualHookNames"/> lists.
/// </summary>
public static class CacheHelpers
{
    /// <summary>The hook names the helpers read, to pass as RunWithCache's names filter.</summary>
    public static IReadOnlySet<string> ResidualHookNames(HookedTransformer model)
    {
        var names = new HashSet<string> { HookNames.Embed, HookNames.LnFinalScale };
        if (model.pos_embed is not null) names.Add(HookNames.PosEmbed);
        for (int l = 0; l < model.Config.n_layers; l++)
        {
            names.UnionWith([HookNames.ResidPre(l), HookNames.AttnOut(l), HookNames.ResidPost(l), HookNames.Z(l), HookNames.Pattern(l)]);
            if (!model.Config.attn_only) names.UnionWith([HookNames.MlpOut(l), HookNames.ResidMid(l)]);
        }
        return names;
    }

    /// <summary>One activation of every layer stacked, [n_layers, ..]: "resid_post", "pattern", ... (short names as <see cref="HookNames.Get"/>).</summary>
    public static Tensor StackActivation(this ActivationCache cache, HookedTransformer model, string name) =>
        stack(Enumerable.Range(0, model.Config.n_layers).Select(l => cache[HookNames.Get(name, l)]).ToArray());

    /// <summary>
    /// embed, pos_embed, then each layer's attn_out and mlp_out: their sum is the final residual stream
    /// (blocks.{last}.hook_resid_post) whenever nothing between the blocks rewrites the stream.
    /// </summary>
    public static ResidualComponents DecomposeResid(this ActivationCache cache, HookedTransformer model)
    {
        var parts = new List<(string, Tensor)> { ("embed", cache[HookNames.Embed]) };
        if (model.pos_embed is not null) parts.Add(("pos_embed", cache[HookNames.PosEmbed]));
        for (int l = 0; l < model.Config.n_layers; l++)
        {
            parts.Add(($"{l}_attn_out", cache[HookNames.AttnOut(l)]));
            if (!model.Config.attn_only) parts.Add(($"{l}_mlp_out", cache[HookNames.MlpOut(l)]));
        }
        return Of(parts);
    }

    /// <summary>The stream entering each layer (resid_pre), then the final resid_post; with includeMid each resid_mid too.</summary>
    public static ResidualComponents AccumulatedResid(this ActivationCache cache, HookedTransformer model, bool includeMid = false)
    {
        var parts = new List<(string, Tensor)>();
        for (int l = 0; l < model.Config.n_layers; l++)
        {
            parts.Add(($"{l}_pre", cache[HookNames.ResidPre(l)]));
            if (includeMid && !model.Config.attn_only) parts.Add(($"{l}_mid", cache[HookNames.ResidMid(l)]));
        }
        parts.Add(("final_post", cache[HookNames.ResidPost(model.Config.n_layers - 1)]));
        return Of(parts);
    }

    /// <summary>
    /// Finer than <see cref="DecomposeResid"/>: embed, pos_embed, every head of every layer (z_h W_O[h]), each layer's
    /// b_O, each layer's mlp_out; sums to the same final residual. Ordinary models only.
    /// </summary>
    public static ResidualComponents DecomposeResidByHead(this ActivationCache cache, HookedTransformer model)
    {
        var embed = cache[HookNames.Embed];
        long batch = embed.shape[0], pos = embed.shape[1];
        var parts = new List<(string, Tensor)> { ("embed", embed) };
        if (model.pos_embed is not null) parts.Add(("pos_embed", cache[HookNames.PosEmbed]));
        using var _ = no_grad();
        for (int l = 0; l < model.Config.n_layers; l++)
        {
            var heads = model.blocks[l].attn.HeadResults(cache[HookNames.Z(l)]);   // [batch, pos, head, d_model]
            for (int h = 0; h < model.Config.n_heads; h++) parts.Add(($"L{l}H{h}", heads.select(2, h)));
            parts.Add(($"L{l}_b_O", model.blocks[l].attn.b_O.detach().expand(batch, pos, -1)));
            if (!model.Config.attn_only) parts.Add(($"{l}_mlp_out", cache[HookNames.MlpOut(l)]));
        }
        return Of(parts);
    }

    /// <summary>
    /// apply_ln_to_stack: the final norm's scale held at its cached value and applied to every component, centred
    /// (LN, LNPre) and divided by ln_final.hook_scale; the norm's weight and bias are not applied.
    /// </summary>
    public static ResidualComponents ApplyLnToStack(this ActivationCache cache, HookedTransformer model, ResidualComponents residual) =>
        model.Config.normalization_type == "none" ? residual
            : residual with { Stack = model.ln_final.ApplyFrozenScale(residual.Stack, cache[HookNames.LnFinalScale].unsqueeze(0)) };   // scale [1, batch, pos, 1]

    private static ResidualComponents Of(List<(string Label, Tensor Part)> parts) =>
        new([.. parts.Select(p => p.Label)], stack(parts.Select(p => p.Part).ToArray()));
}
