using System.Text.Json;
using System.Text.Json.Nodes;
using MechInterp.Data;

namespace MechInterp.IO;

/// <summary>
/// A checkpoint's tokenizer: a small versioned JSON object under <c>__metadata__["tokenizer"]</c> holding what rebuilds
/// it exactly. <c>{"version": 1, "kind": "gpt2"}</c> (<see cref="Gpt2Tokenizer"/>, whose vocabulary ships with
/// Microsoft.ML.Tokenizers), <c>{"version": 1, "kind": "induction", "vocab_size": 64, "max_repeat": 16, "min_repeat": 8}</c>
/// (<see cref="InductionTask"/>) or <c>{"version": 1, "kind": "toy_language", "sequence_length": 33}</c>
/// (<see cref="ToyLanguage"/>). Any other tokenizer cannot be described, and saving a model that has one is refused.
/// </summary>
internal static class CheckpointTokenizer
{
    public const int Version = 1;

    /// <summary>The longest sequence a described task may declare, so a corrupt entry cannot make its sizes overflow.</summary>
    public const int MaxSequenceLength = 1 << 20;

    private static readonly Dictionary<string, string[]> Fields = new()
    {
        ["gpt2"] = [],
        ["induction"] = ["vocab_size", "max_repeat", "min_repeat"],
        ["toy_language"] = ["sequence_length"],
    };

    /// <summary>The entry for a tokenizer; <see cref="NotSupportedException"/> for one this format cannot describe.</summary>
    public static string Describe(ITokenizer tokenizer)
    {
        var entry = new JsonObject { ["version"] = Version };
        switch (tokenizer)
        {
            case Gpt2Tokenizer:
                entry["kind"] = "gpt2";
                break;
            case InductionTask t:
                entry["kind"] = "induction";
                entry["vocab_size"] = t.VocabSize;
                entry["max_repeat"] = t.MaxRepeat;
                entry["min_repeat"] = t.MinRepeat;
                break;
            case ToyLanguage t:
                entry["kind"] = "toy_language";
                entry["sequence_length"] = t.SequenceLength;
                break;
            default:
                throw new NotSupportedException(
                    $"the model's tokenizer ({tokenizer.GetType().FullName}) cannot be saved in a checkpoint: only Gpt2Tokenizer, " +
                    "InductionTask and ToyLanguage can be described; set model.Tokenizer = null to save the model without it, and set it again after loading");
        }
        return entry.ToJsonString();
    }

    /// <summary>
    /// The tokenizer an entry describes, for a model of <paramref name="dVocab"/> tokens. An entry that is not valid JSON,
    /// of another version, of an unknown kind, with a missing, unknown or out-of-range field, or with more tokens than the
    /// model raises <see cref="InvalidDataException"/> naming the file and the value. Nothing of the model exists yet.
    /// </summary>
    public static ITokenizer Parse(string path, string json, int dVocab)
    {
        string key = $"__metadata__[\"{Checkpoint.TokenizerKey}\"]";
        InvalidDataException Bad(string problem) => SafeTensors.Corrupt(path, $"{key} {problem}");

        JsonObject entry;
        try
        {
            entry = JsonNode.Parse(json) as JsonObject ?? throw Bad($"must be a JSON object, got {SafeTensors.Quote(json)}");
            _ = entry.Count;   // duplicate names surface here, not later
        }
        catch (Exception e) when (e is JsonException or ArgumentException)
        {
            throw Bad($"is not valid JSON ({e.Message}): {SafeTensors.Quote(json)}");
        }

        int Integer(string field) =>
            entry[field] is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<int>(out var i)
                ? i
                : throw Bad(entry.ContainsKey(field)
                    ? $"field '{field}' must be an integer, got {SafeTensors.Quote(entry[field]?.ToJsonString() ?? "null")}"
                    : $"has no field '{field}': {SafeTensors.Quote(json)}");

        if (!entry.ContainsKey("version") || Integer("version") != Version)
            throw Bad($"has version {SafeTensors.Quote(entry["version"]?.ToJsonString() ?? "(none)")}; this build reads version {Version}");
        string? kind = entry["kind"] is JsonValue k && k.GetValueKind() == JsonValueKind.String ? k.GetValue<string>() : null;
        if (kind is null || !Fields.TryGetValue(kind, out var fields))
            throw Bad($"has kind {SafeTensors.Quote(entry["kind"]?.ToJsonString() ?? "(none)")}; known kinds are {string.Join(", ", Fields.Keys.Select(n => $"\"{n}\""))}");
        foreach (var (name, _) in entry)
            if (name is not ("version" or "kind") && !fields.Contains(name))
                throw Bad($"has field {SafeTensors.Quote(name)}, which a \"{kind}\" tokenizer does not have (its fields: {(fields.Length == 0 ? "none" : string.Join(", ", fields))})");

        int Length(string field)
        {
            int n = Integer(field);
            return n is >= 1 and <= MaxSequenceLength ? n : throw Bad($"field '{field}' is {n}, outside [1, {MaxSequenceLength}]");
        }

        int vocab = kind switch { "gpt2" => Gpt2Tokenizer.Vocab, "induction" => Integer("vocab_size"), _ => ToyLanguage.Vocab };
        if (vocab > dVocab)
            throw Bad($"describes a \"{kind}\" tokenizer of {vocab} tokens, more than the config's d_vocab ({dVocab})");
        try
        {
            return kind switch
            {
                "gpt2" => new Gpt2Tokenizer(),
                "induction" => new InductionTask(vocab, Length("max_repeat"), Length("min_repeat")),
                _ => new ToyLanguage(Length("sequence_length")),
            };
        }
        catch (ArgumentOutOfRangeException e)
        {
            // The task's own check, by parameter and value ("vocab size must be at least 3, got 2").
            throw Bad($"describes no valid \"{kind}\" tokenizer: {e.Message.Split(" (Parameter")[0]}; the entry is {SafeTensors.Quote(json)}");
        }
    }
}
