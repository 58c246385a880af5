using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.IO;

/// <summary>HookedTransformer checkpoints: TransformerLens state-dict names, the config as JSON metadata.</summary>
public static class Checkpoint
{
    /// <summary>Buffers TransformerLens keeps in its state dicts; we recompute them, so a file may carry them.</summary>
    private static readonly string[] IgnoredSuffixes = [".IGNORE", ".mask", ".rotary_sin", ".rotary_cos"];

    /// <summary>A batched model's checkpoint lists its instances' seeds under this metadata key (parameters then carry the instance dimension).</summary>
    public const string InstanceSeedsKey = "instance_seeds";

    /// <summary>
    /// The model's tokenizer, when it has one, is described under this metadata key (see <see cref="Save"/>); a
    /// checkpoint without it loads with no tokenizer.
    /// </summary>
    public const string TokenizerKey = "tokenizer";

    /// <summary>
    /// Writes the model's parameters, its config and, when it has one, its tokenizer: a small versioned JSON object
    /// under <see cref="TokenizerKey"/> that rebuilds it exactly (<c>{"version": 1, "kind": "gpt2"}</c>,
    /// <c>{"version": 1, "kind": "induction", "vocab_size": 64, "max_repeat": 16, "min_repeat": 8}</c>,
    /// <c>{"version": 1, "kind": "toy_language", "sequence_length": 33}</c>). A tokenizer of another type cannot be
    /// described: <see cref="NotSupportedException"/>, raised before anything is written.
    /// </summary>
    public static void Save(HookedTransformer model, string path)
    {
        var metadata = new Dictionary<string, string> { ["config"] = model.Config.ToJson(), ["format"] = "pt" };
        if (model.IsBatched) metadata[InstanceSeedsKey] = System.Text.Json.JsonSerializer.Serialize(model.Seeds);
        if (model.Tokenizer is { } tokenizer) metadata[TokenizerKey] = CheckpointTokenizer.Describe(tokenizer);
        SafeTensors.Write(path, model.StateDict(), metadata);
    }

    /// <summary>The most instances a checkpoint may declare, so a corrupt header cannot ask for unbounded memory.</summary>
    public const int MaxInstances = 4096;

    /// <summary>At most this many problems are listed in one error; the rest are counted.</summary>
    private const int MaxListedProblems = 10;

    /// <summary>
    /// Reads a checkpoint. Everything is checked before anything is allocated: the header against the file size,
    /// the config's sizes against what the file's tensors hold, then every parameter's shape (from the model's own
    /// constructors, with no memory behind them) against the header, and the tokenizer entry, when there is one,
    /// against the kinds this build knows. Any problem raises <see cref="InvalidDataException"/> naming the file and
    /// the problem. The loaded model has the saved tokenizer, or none when the file has no entry (older checkpoints).
    /// </summary>
    public static HookedTransformer Load(string path)
    {
        var (entries, metadata, _) = SafeTensors.ReadHeader(path);
        if (!metadata.TryGetValue("config", out var json))
            throw SafeTensors.Corrupt(path, "no __metadata__[\"config\"]; this is not a MechInterp checkpoint");
        DecoderConfig config;
        try { config = DecoderConfig.FromJson(json).Validate(); }
        catch (Exception e) when (e is System.Text.Json.JsonException or ArgumentException or NotSupportedException or InvalidOperationException)
        {
            throw SafeTensors.Corrupt(path, $"__metadata__[\"config\"] is not a valid config: {e.Message}");
        }

        int[]? seeds = null;
        if (metadata.TryGetValue(InstanceSeedsKey, out var seedJson))
        {
            try { seeds = System.Text.Json.JsonSerializer.Deserialize<int[]>(seedJson); }
            catch (System.Text.Json.JsonException e)
            {
                throw SafeTensors.Corrupt(path, $"__metadata__[\"{InstanceSeedsKey}\"] is not a list of seeds: {e.Message}");
            }
            if (seeds is null || seeds.Length == 0 || seeds.Length > MaxInstances)
                throw SafeTensors.Corrupt(path, $"__metadata__[\"{InstanceSeedsKey}\"] must list 1 to {MaxInstances} seeds, got {SafeTensors.Quote(seedJson)}");
        }

        var tokenizer = metadata.TryGetValue(TokenizerKey, out var tokenizerJson)
            ? CheckpointTokenizer.Parse(path, tokenizerJson, config.d_vocab)
            : null;

        CheckSizesAgainstFile(path, config, seeds, entries);
        var expected = HookedTransformer.ParameterShapes(config, seeds);
        var found = entries.ToDictionary(e => e.Name);
        var problems = new List<string>();
        foreach (var (name, shape) in expected)
        {
            if (!found.TryGetValue(name, out var entry))
                problems.Add($"tensor '{name}' is missing (expected [{string.Join(", ", shape)}])");
            else if (!entry.Shape.SequenceEqual(shape))
                problems.Add($"tensor '{name}' has shape [{string.Join(", ", entry.Shape)}], expected [{string.Join(", ", shape)}]");
            else if (entry.DType != ScalarType.Float32)
                problems.Add($"tensor '{name}' has dtype {SafeTensors.DTypeName(entry.DType)}, expected F32");
        }
        foreach (var name in found.Keys.Where(n => !expected.ContainsKey(n) && !IgnoredSuffixes.Any(n.EndsWith)))
            problems.Add($"tensor {SafeTensors.Quote(name)} is not a parameter of this config");
        if (problems.Count > 0)
        {
            string more = problems.Count > MaxListedProblems ? $"; and {problems.Count - MaxListedProblems} more problems" : "";
            throw SafeTensors.Corrupt(path, string.Join("; ", problems.Take(MaxListedProblems)) + more);
        }

        var model = HookedTransformer.Create(config, seeds);
        model.Tokenizer = tokenizer;
        var parameters = model.StateDict();
        // Everything checked: only now copy, so nothing is ever partially loaded.
        try
        {
            var (tensors, _) = SafeTensors.Read(path);
            try
            {
                using var _ = no_grad();
                foreach (var (name, parameter) in parameters)
                    parameter.copy_(tensors[name]);
            }
            finally
            {
                foreach (var t in tensors.Values) t.Dispose();
            }
        }
        catch
        {
            model.Dispose();
            throw;
        }
        return model;
    }

    /// <summary>
    /// Every size of the config is a dimension of some parameter, so none can exceed the number of values all the
    /// file's tensors hold together, and every layer has tensors of its own: a config asking for more is rejected
    /// here, by field and value, before even the shapes are built.
    /// </summary>
    private static void CheckSizesAgainstFile(string path, DecoderConfig config, int[]? seeds, List<SafeTensors.Entry> entries)
    {
        long values = 0;
        foreach (var e in entries) values += e.Shape.Aggregate(1L, (a, b) => a * b);   // each product fits: checked against the file size
        var sizes = new List<(string Field, long Value)>
        {
            ("d_model", config.d_model), ("d_vocab", config.d_vocab), ("n_heads", config.n_heads), ("d_head", config.DHead),
        };
        if (!config.attn_only) sizes.Add(("d_mlp", config.DMlp));
        if (config.positional_embedding_type == "standard") sizes.Add(("n_ctx", config.n_ctx));
        if (config.IsMoe) sizes.Add(("n_experts", config.n_experts));
        if (seeds is not null) sizes.Add(($"the number of {InstanceSeedsKey}", seeds.Length));
        var problems = sizes.Where(s => s.Value > values)
            .Select(s => $"{s.Field} ({s.Value}) is more than the {values} values all the file's tensors hold").ToList();
        if (config.n_layers > entries.Count)
            problems.Add($"n_layers ({config.n_layers}) is more than the {entries.Count} tensors in the file");
        if (problems.Count > 0)
            throw SafeTensors.Corrupt(path, "the config asks for more than the file holds: " + string.Join("; ", problems));
    }
}
