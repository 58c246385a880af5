using System.Text.Json;
using System.Text.Json.Serialization;

namespace MechInterp.Model;

/// <summary>
/// The configuration of a decoder, with TransformerLens' field names and meanings so a config
/// dict from Python maps one to one. Zero means "derive": d_head = d_model / n_heads,
/// d_mlp = 4 d_model, rotary_dim = d_head. Call <see cref="Validate"/> (the model does).
/// </summary>
public sealed record DecoderConfig
{
    public int d_model { get; init; } = 128;
    public int n_layers { get; init; } = 2;
    public int n_heads { get; init; } = 4;
    public int d_head { get; init; }
    public int d_mlp { get; init; }
    public int d_vocab { get; init; } = 64;
    public int n_ctx { get; init; } = 64;
    /// <summary>relu | gelu | gelu_new | silu</summary>
    public string act_fn { get; init; } = "gelu";
    /// <summary>LN | LNPre | RMS | RMSPre | none (TransformerLens' None); the Pre kinds are what folding a norm's weights leaves</summary>
    public string normalization_type { get; init; } = "LN";
    /// <summary>standard | rotary</summary>
    public string positional_embedding_type { get; init; } = "standard";
    public int rotary_dim { get; init; }
    public bool attn_only { get; init; }
    /// <summary>
    /// True (default): each sublayer adds its output to the residual stream. False: a plain decoder, whose sublayers
    /// replace the stream (x ← attn(ln1(x)), then x ← mlp(ln2(x))); the hooks keep their names and hold the replaced
    /// stream. TransformerLens has no such field: Python code loading a checkpoint must read it.
    /// </summary>
    public bool residual { get; init; } = true;
    /// <summary>Materialize the per-head output hook attn.hook_result (costs memory, as in TransformerLens).</summary>
    public bool use_attn_result { get; init; }
    public double eps { get; init; } = 1e-5;
    /// <summary>Std of the normal weight initialization; 0 means 0.8 / sqrt(d_model) as TransformerLens.</summary>
    public double init_range { get; init; }
    public int seed { get; init; }

    /// <summary>Experts per MoE block; 0 means dense MLP blocks.</summary>
    public int n_experts { get; init; }
    public int experts_per_token { get; init; }
    /// <summary>Switch-Transformer load-balancing coefficient α in α·E·Σ f_e·P_e.</summary>
    public double router_aux_loss_coef { get; init; } = 0.01;
    /// <summary>Router z-loss coefficient (mean of logsumexp² of router logits); 0 disables it.</summary>
    public double router_z_loss_coef { get; init; }
    /// <summary>
    /// Expert capacity as a multiple of an even share: each expert keeps at most
    /// ceil(factor · tokens · k / n_experts) (token, slot) pairs per forward pass, the rest are dropped
    /// (gate 0) and counted in Moe.LastRouting. 0 (default) means no limit.
    /// </summary>
    public double expert_capacity_factor { get; init; }
    /// <summary>
    /// Whether a token's gates are its chosen experts' weights renormalized to sum to 1 (Mixtral; Hugging Face's
    /// name). Off by default, the Switch-style gate: with one expert per token a renormalized gate is always 1 and
    /// the router would learn nothing from the output.
    /// </summary>
    public bool norm_topk_prob { get; init; }

    [JsonIgnore] public int DHead => d_head > 0 ? d_head : (n_heads > 0 ? d_model / n_heads : 0);
    [JsonIgnore] public int DMlp => d_mlp > 0 ? d_mlp : 4 * d_model;
    [JsonIgnore] public int RotaryDim => rotary_dim > 0 ? rotary_dim : DHead;
    [JsonIgnore] public double InitRange => init_range > 0 ? init_range : 0.8 / Math.Sqrt(d_model);
    [JsonIgnore] public bool IsMoe => n_experts > 0;

    private static readonly string[] ActFns = ["relu", "gelu", "gelu_new", "silu"];
    private static readonly string[] Norms = ["LN", "LNPre", "RMS", "RMSPre", "none"];
    private static readonly string[] Positions = ["standard", "rotary"];

    /// <summary>Throws <see cref="ArgumentException"/> naming every inconsistent field and its value.</summary>
    public DecoderConfig Validate()
    {
        var problems = new List<string>();
        void Positive(int value, string name)
        {
            if (value <= 0) problems.Add($"{name} must be positive, got {value}");
        }
        Positive(d_model, nameof(d_model));
        Positive(n_layers, nameof(n_layers));
        Positive(n_heads, nameof(n_heads));
        Positive(d_vocab, nameof(d_vocab));
        Positive(n_ctx, nameof(n_ctx));
        if (d_head < 0) problems.Add($"d_head must be positive (or 0 to derive it), got {d_head}");
        if (d_mlp < 0) problems.Add($"d_mlp must be positive (or 0 for 4 * d_model), got {d_mlp}");
        if (d_head == 0 && n_heads > 0 && d_model > 0 && d_model % n_heads != 0)
            problems.Add($"d_model ({d_model}) must be divisible by n_heads ({n_heads}) when d_head is unset");
        if (d_mlp == 0 && !attn_only && d_model > int.MaxValue / 4)
            problems.Add($"d_mlp derived as 4 * d_model ({4L * d_model}) does not fit in int32; set d_mlp");
        if (d_model > 0 && n_heads > 0 && d_vocab > 0 && n_ctx > 0 && d_head >= 0 && d_mlp >= 0)
        {
            // The largest parameters (W_Q, W_E, W_pos, W_in): their element counts must be countable in int64 bytes.
            Int128 dm = d_model, largest = Int128.Max(Int128.Max(n_heads * dm * DHead, d_vocab * dm), n_ctx * dm);
            long dMlp = d_mlp > 0 ? d_mlp : 4L * d_model;
            if (!attn_only) largest = Int128.Max(largest, Math.Max(1, n_experts) * dm * dMlp);
            if (largest > long.MaxValue / 8)
                problems.Add($"a parameter would hold {largest} values, more than int64 can count in bytes (d_model {d_model}, n_heads {n_heads}, d_head {DHead}, d_vocab {d_vocab}, n_ctx {n_ctx}, d_mlp {d_mlp})");
        }
        if (!ActFns.Contains(act_fn)) problems.Add($"act_fn must be one of {string.Join("|", ActFns)}, got '{act_fn}'");
        if (!Norms.Contains(normalization_type)) problems.Add($"normalization_type must be one of {string.Join("|", Norms)}, got '{normalization_type}'");
        if (!Positions.Contains(positional_embedding_type))
            problems.Add($"positional_embedding_type must be one of {string.Join("|", Positions)}, got '{positional_embedding_type}'");
        if (positional_embedding_type == "rotary")
        {
            if (RotaryDim > DHead || RotaryDim % 2 != 0 || RotaryDim <= 0)
                problems.Add($"rotary_dim ({RotaryDim}) must be even and at most d_head ({DHead})");
        }
        if (!(eps > 0)) problems.Add($"eps must be positive, got {eps}");
        if (init_range < 0 || double.IsNaN(init_range)) problems.Add($"init_range must be non-negative, got {init_range}");
        if (n_experts < 0) problems.Add($"n_experts must be non-negative, got {n_experts}");
        if (n_experts > 0)
        {
            if (attn_only) problems.Add($"n_experts ({n_experts}) needs MLP blocks but attn_only is true");
            if (experts_per_token <= 0) problems.Add($"experts_per_token must be positive when n_experts > 0, got {experts_per_token}");
            if (experts_per_token > n_experts) problems.Add($"experts_per_token ({experts_per_token}) must not exceed n_experts ({n_experts})");
            if (router_aux_loss_coef < 0 || double.IsNaN(router_aux_loss_coef)) problems.Add($"router_aux_loss_coef must be non-negative, got {router_aux_loss_coef}");
            if (router_z_loss_coef < 0 || double.IsNaN(router_z_loss_coef)) problems.Add($"router_z_loss_coef must be non-negative, got {router_z_loss_coef}");
            if (expert_capacity_factor < 0 || double.IsNaN(expert_capacity_factor)) problems.Add($"expert_capacity_factor must be non-negative (0: no limit), got {expert_capacity_factor}");
        }
        else if (experts_per_token != 0)
            problems.Add($"experts_per_token ({experts_per_token}) is set but n_experts is 0");
        if (problems.Count > 0)
            throw new ArgumentException("invalid DecoderConfig: " + string.Join("; ", problems));
        return this;
    }

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = false };

    /// <summary>The config as JSON with TransformerLens field names (derived fields written out).</summary>
    public string ToJson() => JsonSerializer.Serialize(this with { d_head = DHead, d_mlp = attn_only ? d_mlp : DMlp }, Json);

    /// <summary>Parses <see cref="ToJson"/> output; unknown fields are ignored, as a Python dict may carry more.</summary>
    public static DecoderConfig FromJson(string json)
    {
        // The serializer's own message for a non-boolean names the path but not the value.
        if (System.Text.Json.Nodes.JsonNode.Parse(json) is System.Text.Json.Nodes.JsonObject obj
            && obj.TryGetPropertyValue(nameof(residual), out var flag)
            && flag?.GetValueKind() is not (JsonValueKind.True or JsonValueKind.False))
        {
            string got = flag?.ToJsonString() ?? "null";
            if (got.Length > 80) got = got[..80] + $"... ({got.Length} characters)";   // a hostile file's value stays out of the message
            throw new ArgumentException($"config field 'residual' must be a boolean (true or false), got {got}");
        }
        return JsonSerializer.Deserialize<DecoderConfig>(json, Json) ?? throw new ArgumentException("config JSON is null");
    }
}
