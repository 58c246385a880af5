using System.Text.Json;
using System.Text.Json.Nodes;
using MechInterp.Data;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.IO;

/// <summary>
/// HuggingFace GPT-2 checkpoints (a directory with config.json and model.safetensors, as GPT2LMHeadModel saves
/// them) converted into this project's (TransformerLens's) names and shapes, as TransformerLens's
/// convert_gpt2_weights: Conv1D weights are [in, out], so x W + b with no transpose; c_attn's fused [d_model, 3 d_model]
/// splits into W_Q, W_K, W_V, each [n_heads, d_model, d_head]; c_proj rows become W_O [n_heads, d_head, d_model];
/// lm_head is tied to wte (W_U = wteᵀ when the file has no lm_head.weight), b_U = 0. Names are accepted with or
/// without the "transformer." prefix; the attention-mask buffers (attn.bias, attn.masked_bias) are skipped.
/// Names and shapes are checked against the config before any tensor data is read; nothing is downloaded.
/// </summary>
public static class Gpt2Weights
{
    /// <summary>Reads a downloaded GPT-2 directory (config.json + model.safetensors) as a HookedTransformer.</summary>
    public static HookedTransformer Load(string directory)
    {
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"no directory '{directory}' (expected config.json and model.safetensors of a GPT-2 checkpoint)");
        string configPath = Path.Combine(directory, "config.json"), weightsPath = Path.Combine(directory, "model.safetensors");
        if (!File.Exists(configPath)) throw new FileNotFoundException($"'{directory}' has no config.json", configPath);
        if (!File.Exists(weightsPath)) throw new FileNotFoundException($"'{directory}' has no model.safetensors (pytorch_model.bin is not read: convert it to safetensors first)", weightsPath);
        var config = ConfigFromJson(File.ReadAllText(configPath));
        var (entries, _, _) = SafeTensors.ReadHeader(weightsPath);
        CheckNames(weightsPath, config, entries.ToDictionary(e => Strip(e.Name), e => e.Shape));
        var (tensors, _) = SafeTensors.Read(weightsPath);
        try { return FromTensors(config, tensors.ToDictionary(kv => Strip(kv.Key), kv => kv.Value)); }
        finally { foreach (var t in tensors.Values) t.Dispose(); }
    }

    /// <summary>
    /// The DecoderConfig a GPT-2 config.json describes: n_embd, n_head, n_layer, vocab_size, n_positions (or n_ctx),
    /// n_inner (null: 4 n_embd), activation_function, layer_norm_epsilon; LayerNorm, learned positions.
    /// </summary>
    public static DecoderConfig ConfigFromJson(string json)
    {
        if (JsonNode.Parse(json) is not JsonObject o) throw new ArgumentException("config.json is not a JSON object");
        int Int(string name, int? fallback = null)
        {
            if (o[name] is JsonValue v && v.TryGetValue<int>(out var i)) return i;
            if (o[name] is null && fallback is { } f) return f;
            throw new ArgumentException($"config.json field '{name}' must be an integer, got {o[name]?.ToJsonString() ?? "nothing"}");
        }
        if (o["model_type"] is JsonValue mt && mt.GetValue<string>() != "gpt2")
            throw new ArgumentException($"config.json has model_type '{mt.GetValue<string>()}'; only gpt2 checkpoints are converted");
        if (o["scale_attn_by_inverse_layer_idx"] is JsonValue s && s.GetValueKind() == JsonValueKind.True)
            throw new ArgumentException("config.json sets scale_attn_by_inverse_layer_idx, which this model does not implement");
        if (o["scale_attn_weights"] is JsonValue w && w.GetValueKind() == JsonValueKind.False)
            throw new ArgumentException("config.json sets scale_attn_weights false (no 1/sqrt(d_head)), which this model does not implement");
        string activation = o["activation_function"]?.GetValue<string>() ?? "gelu_new";
        string act = activation switch
        {
            "gelu_new" => "gelu_new",
            "gelu" => "gelu",
            "relu" => "relu",
            "silu" or "swish" => "silu",
            _ => throw new ArgumentException($"config.json activation_function '{activation}' is not one of gelu_new, gelu, relu, silu"),
        };
        int nEmbd = Int("n_embd"), nPositions = o["n_positions"] is null ? Int("n_ctx") : Int("n_positions");
        int nInner = o["n_inner"] is null || o["n_inner"]!.GetValueKind() == JsonValueKind.Null ? 4 * nEmbd : Int("n_inner");
        double eps = o["layer_norm_epsilon"] is JsonValue e ? e.GetValue<double>() : 1e-5;
        return new DecoderConfig
        {
            d_model = nEmbd, n_heads = Int("n_head"), n_layers = Int("n_layer"), d_vocab = Int("vocab_size"), n_ctx = nPositions,
            d_mlp = nInner, act_fn = act, eps = eps, normalization_type = "LN", positional_embedding_type = "standard",
        }.Validate();
    }

    private static string Strip(string name) => name.StartsWith("transformer.", StringComparison.Ordinal) ? name["transformer.".Length..] : name;

    private static bool IsBuffer(string name) => name.EndsWith(".attn.bias", StringComparison.Ordinal) || name.EndsWith(".attn.masked_bias", StringComparison.Ordinal);

    /// <summary>Every tensor a GPT-2 checkpoint of this config holds, by name (without "transformer."), and its shape.</summary>
    public static Dictionary<string, long[]> ExpectedShapes(DecoderConfig c)
    {
        long d = c.d_model, f = c.DMlp;
        var shapes = new Dictionary<string, long[]>
        {
            ["wte.weight"] = [c.d_vocab, d], ["wpe.weight"] = [c.n_ctx, d], ["ln_f.weight"] = [d], ["ln_f.bias"] = [d],
            ["lm_head.weight"] = [c.d_vocab, d],
        };
        for (int l = 0; l < c.n_layers; l++)
        {
            string h = $"h.{l}";
            shapes[$"{h}.ln_1.weight"] = [d];
            shapes[$"{h}.ln_1.bias"] = [d];
            shapes[$"{h}.attn.c_attn.weight"] = [d, 3 * d];
            shapes[$"{h}.attn.c_attn.bias"] = [3 * d];
            shapes[$"{h}.attn.c_proj.weight"] = [d, d];
            shapes[$"{h}.attn.c_proj.bias"] = [d];
            shapes[$"{h}.ln_2.weight"] = [d];
            shapes[$"{h}.ln_2.bias"] = [d];
            shapes[$"{h}.mlp.c_fc.weight"] = [d, f];
            shapes[$"{h}.mlp.c_fc.bias"] = [f];
            shapes[$"{h}.mlp.c_proj.weight"] = [f, d];
            shapes[$"{h}.mlp.c_proj.bias"] = [d];
        }
        return shapes;
    }

    private static void CheckNames(string path, DecoderConfig config, Dictionary<string, long[]> found)
    {
        var expected = ExpectedShapes(config);
        var problems = new List<string>();
        foreach (var (name, shape) in found)
        {
            if (IsBuffer(name)) continue;
            if (!expected.TryGetValue(name, out var want))
                problems.Add($"tensor {SafeTensors.Quote(name)} is not a GPT-2 weight (expected names such as h.0.attn.c_attn.weight)");
            else if (!shape.SequenceEqual(want))
                problems.Add($"tensor '{name}' has shape [{string.Join(", ", shape)}], expected [{string.Join(", ", want)}] for this config.json");
        }
        foreach (var name in expected.Keys.Where(n => n != "lm_head.weight" && !found.ContainsKey(n)))
            problems.Add($"tensor '{name}' is missing");
        if (problems.Count > 0)
            throw SafeTensors.Corrupt(path, string.Join("; ", problems.Take(10)) + (problems.Count > 10 ? $"; and {problems.Count - 10} more problems" : ""));
    }

    /// <summary>
    /// The model from GPT-2 tensors already in memory (names without "transformer."; buffers allowed). Checks names and
    /// shapes as <see cref="Load"/> does.
    /// </summary>
    public static HookedTransformer FromTensors(DecoderConfig config, IReadOnlyDictionary<string, Tensor> hf)
    {
        var byName = hf.ToDictionary(kv => Strip(kv.Key), kv => kv.Value);
        CheckNames("GPT-2 tensors", config, byName.ToDictionary(kv => kv.Key, kv => kv.Value.shape));
        long d = config.d_model, heads = config.n_heads, dHead = config.DHead;
        var model = new HookedTransformer(config);
        using var _ = no_grad();
        var mine = model.StateDict();
        void Set(string name, Tensor value) => mine[name].copy_(value.to_type(ScalarType.Float32));
        Tensor Hf(string name) => byName[name];

        Set("embed.W_E", Hf("wte.weight"));
        Set("pos_embed.W_pos", Hf("wpe.weight"));
        for (int l = 0; l < config.n_layers; l++)
        {
            using var scope = NewDisposeScope();
            string h = $"h.{l}", b = $"blocks.{l}";
            Set($"{b}.ln1.w", Hf($"{h}.ln_1.weight"));
            Set($"{b}.ln1.b", Hf($"{h}.ln_1.bias"));
            var qkv = Hf($"{h}.attn.c_attn.weight").chunk(3, 1);   // 3 × [d_model, n_heads·d_head]
            var qkvBias = Hf($"{h}.attn.c_attn.bias").chunk(3, 0); // 3 × [n_heads·d_head]
            string[] which = ["Q", "K", "V"];
            for (int i = 0; i < 3; i++)
            {
                Set($"{b}.attn.W_{which[i]}", qkv[i].view(d, heads, dHead).permute(1, 0, 2));   // [n_heads, d_model, d_head]
                Set($"{b}.attn.b_{which[i]}", qkvBias[i].view(heads, dHead));                   // [n_heads, d_head]
            }
            Set($"{b}.attn.W_O", Hf($"{h}.attn.c_proj.weight").view(heads, dHead, d));          // [n_heads, d_head, d_model]
            Set($"{b}.attn.b_O", Hf($"{h}.attn.c_proj.bias"));
            Set($"{b}.ln2.w", Hf($"{h}.ln_2.weight"));
            Set($"{b}.ln2.b", Hf($"{h}.ln_2.bias"));
            Set($"{b}.mlp.W_in", Hf($"{h}.mlp.c_fc.weight"));
            Set($"{b}.mlp.b_in", Hf($"{h}.mlp.c_fc.bias"));
            Set($"{b}.mlp.W_out", Hf($"{h}.mlp.c_proj.weight"));
            Set($"{b}.mlp.b_out", Hf($"{h}.mlp.c_proj.bias"));
        }
        Set("ln_final.w", Hf("ln_f.weight"));
        Set("ln_final.b", Hf("ln_f.bias"));
        Set("unembed.W_U", (byName.TryGetValue("lm_head.weight", out var head) ? head : Hf("wte.weight")).t());
        mine["unembed.b_U"].zero_();
        // GPT-2's own vocabulary: text goes through its BPE, and a saved conversion keeps it.
        if (config.d_vocab == Gpt2Tokenizer.Vocab) model.Tokenizer = new Gpt2Tokenizer();
        return model;
    }
}
