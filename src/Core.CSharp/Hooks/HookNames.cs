namespace MechInterp.Hooks;

/// <summary>
/// Hook names built from where the hook lives, as TransformerLens's utils.get_act_name: HookNames.ResidPost(2) is
/// "blocks.2.hook_resid_post", HookNames.Get("pattern", 1) is "blocks.1.attn.hook_pattern".
/// </summary>
public static class HookNames
{
    public const string Embed = "hook_embed";
    public const string PosEmbed = "hook_pos_embed";
    public const string LnFinalScale = "ln_final.hook_scale";
    public const string LnFinalNormalized = "ln_final.hook_normalized";

    public static string ResidPre(int layer) => Block(layer, "hook_resid_pre");
    public static string ResidMid(int layer) => Block(layer, "hook_resid_mid");
    public static string ResidPost(int layer) => Block(layer, "hook_resid_post");
    public static string AttnOut(int layer) => Block(layer, "hook_attn_out");
    public static string MlpOut(int layer) => Block(layer, "hook_mlp_out");
    public static string Q(int layer) => Block(layer, "attn.hook_q");
    public static string K(int layer) => Block(layer, "attn.hook_k");
    public static string V(int layer) => Block(layer, "attn.hook_v");
    public static string Z(int layer) => Block(layer, "attn.hook_z");
    public static string Result(int layer) => Block(layer, "attn.hook_result");
    public static string AttnScores(int layer) => Block(layer, "attn.hook_attn_scores");
    public static string Pattern(int layer) => Block(layer, "attn.hook_pattern");
    /// <summary>q and k after the rotation, with rotary positions only.</summary>
    public static string RotQ(int layer) => Block(layer, "attn.hook_rot_q");
    public static string RotK(int layer) => Block(layer, "attn.hook_rot_k");
    public static string MlpPre(int layer) => Block(layer, "mlp.hook_pre");
    public static string MlpPost(int layer) => Block(layer, "mlp.hook_post");
    /// <summary>A MoE block's router logits [batch, pos, n_experts] (TransformerLens's Mixtral names, as the two below).</summary>
    public static string RouterLogits(int layer) => Block(layer, "mlp.hook_router_logits");
    /// <summary>A MoE block's gate weights over the experts [batch, pos, n_experts].</summary>
    public static string ExpertWeights(int layer) => Block(layer, "mlp.hook_expert_weights");
    /// <summary>A MoE block's chosen experts [batch, pos, k].</summary>
    public static string ExpertIndices(int layer) => Block(layer, "mlp.hook_expert_indices");
    /// <summary>The scale of a block's first (ln1) or second (ln2) norm.</summary>
    public static string LnScale(int layer, int norm) => Block(layer, $"{Norm(norm)}.hook_scale");
    public static string LnNormalized(int layer, int norm) => Block(layer, $"{Norm(norm)}.hook_normalized");

    private static readonly string[] Stream = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"];
    private static readonly string[] Attention = ["q", "k", "v", "z", "result", "attn_scores", "pattern", "rot_q", "rot_k"];
    private static readonly string[] Mlp = ["pre", "post", "router_logits", "expert_weights", "expert_indices"];

    /// <summary>
    /// The hook of a short name at a layer (get_act_name): resid_pre | resid_mid | resid_post | attn_out | mlp_out,
    /// q | k | v | z | result | attn_scores | pattern | rot_q | rot_k (attention), pre | post | router_logits |
    /// expert_weights | expert_indices (MLP or MoE); embed and pos_embed take no layer. A full name passes through.
    /// </summary>
    public static string Get(string name, int? layer = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.StartsWith("hook_", StringComparison.Ordinal) || name.StartsWith("blocks.", StringComparison.Ordinal) || name.StartsWith("ln_final.", StringComparison.Ordinal))
            return name;
        if (name is "embed" or "pos_embed")
            return layer is null ? $"hook_{name}" : throw new ArgumentException($"'{name}' has no layer, got layer {layer}", nameof(layer));
        string? place = Stream.Contains(name) ? "" : Attention.Contains(name) ? "attn." : Mlp.Contains(name) ? "mlp." : null;
        if (place is null)
            throw new ArgumentException($"unknown hook '{name}'; use one of embed, pos_embed, {string.Join(", ", Stream.Concat(Attention).Concat(Mlp))}, or a full hook name", nameof(name));
        if (layer is not { } l) throw new ArgumentException($"'{name}' needs a layer", nameof(layer));
        return Block(l, $"{place}hook_{name}");
    }

    private static string Block(int layer, string rest) =>
        layer >= 0 ? $"blocks.{layer}.{rest}" : throw new ArgumentOutOfRangeException(nameof(layer), layer, "layer must be non-negative");

    private static string Norm(int norm) => norm is 1 or 2 ? $"ln{norm}" : throw new ArgumentOutOfRangeException(nameof(norm), norm, "a block's norms are ln1 and ln2");
}
