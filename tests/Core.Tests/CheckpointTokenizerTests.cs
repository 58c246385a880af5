using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using MechInterp.Data;
using MechInterp.IO;
using MechInterp.Model;
using MechInterp.Training;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>A checkpoint records the model's tokenizer and loading restores it; older files and bad entries as documented.</summary>
public sealed class CheckpointTokenizerTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("mechinterp-ckpt-tok-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private string PathOf(string name) => Path.Combine(dir, name);

    /// <summary>The file's __metadata__ as written, read without the loader.</summary>
    private static JsonObject Metadata(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        return JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!["__metadata__"]!.AsObject();
    }

    public static TheoryData<string> Kinds => new() { "gpt2", "induction", "toy_language" };

    /// <summary>A tokenizer of each kind, its text, and a model with room for its vocabulary.</summary>
    private static (ITokenizer Tokenizer, string Text, DecoderConfig Config) Example(string kind) => kind switch
    {
        "gpt2" => (new Gpt2Tokenizer(), "Hello world, the induction head",
            new DecoderConfig { d_model = 8, n_layers = 1, n_heads = 2, d_vocab = Gpt2Tokenizer.Vocab, n_ctx = 16, attn_only = true }),
        "induction" => (new InductionTask(vocabSize: 10, maxRepeat: 5, minRepeat: 3), "t5 t2 t9 t5 t2",
            ModelTests.Tiny() with { d_vocab = 10 }),
        _ => (new ToyLanguage(12), "BOS A2 N3s V3s N1p . ( D4 D5 )",
            ModelTests.Tiny() with { d_vocab = ToyLanguage.Vocab }),
    };

    [Fact]
    public void ATrainerGivesAModelWithoutATokenizerItsTasksAndLeavesAGivenOneAlone()
    {
        using var scope = NewDisposeScope();
        var task = new InductionTask(vocabSize: 10, maxRepeat: 5, minRepeat: 3);
        using var bare = new HookedTransformer(ModelTests.Tiny() with { d_vocab = 10 });
        _ = new Trainer(bare, task, new TrainingConfig { Steps = 1 });
        Assert.Same(task, bare.Tokenizer);

        var own = new InductionTask(vocabSize: 10, maxRepeat: 4, minRepeat: 2);
        using var given = new HookedTransformer(ModelTests.Tiny() with { d_vocab = 10 }) { Tokenizer = own };
        _ = new Trainer(given, task, new TrainingConfig { Steps = 1 });
        Assert.Same(own, given.Tokenizer);
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void EachTokenizerKindSavesAndLoads(string kind)
    {
        using var scope = NewDisposeScope();
        var (tokenizer, text, config) = Example(kind);
        using var model = new HookedTransformer(config) { Tokenizer = tokenizer };
        string path = PathOf($"{kind}.safetensors");
        model.Save(path);
        Assert.Equal(kind, JsonNode.Parse(Metadata(path)[Checkpoint.TokenizerKey]!.GetValue<string>())!["kind"]!.GetValue<string>());

        using var loaded = HookedTransformer.Load(path);
        Assert.Equal(tokenizer.GetType(), loaded.Tokenizer?.GetType());
        Assert.Equal(model.ToStrTokens(text), loaded.ToStrTokens(text));
        Assert.Equal(model.ToText(model.ToTokens(text)), loaded.ToText(loaded.ToTokens(text)));
        var tokens = ModelTests.Tokens(1, 6, tokenizer.VocabSize, 5);
        Assert.Equal(model.ToStrTokens(tokens), loaded.ToStrTokens(tokens));
        switch (tokenizer, loaded.Tokenizer)
        {
            case (InductionTask a, InductionTask b):
                Assert.Equal((a.VocabSize, a.MaxRepeat, a.MinRepeat), (b.VocabSize, b.MaxRepeat, b.MinRepeat));
                break;
            case (ToyLanguage a, ToyLanguage b):
                Assert.Equal(a.SequenceLength, b.SequenceLength);
                break;
        }
    }

    [Fact]
    public void ABatchedModelKeepsItsTokenizer()
    {
        using var scope = NewDisposeScope();
        var task = new InductionTask(vocabSize: 11, maxRepeat: 4);
        using var batched = HookedTransformer.Batched(ModelTests.Tiny(), [1, 2]);
        batched.Tokenizer = task;
        string path = PathOf("batched.safetensors");
        batched.Save(path);
        using var loaded = HookedTransformer.Load(path);
        Assert.Equal(["BOS", "t3", "t7"], loaded.ToStrTokens("t3 t7"));
        Assert.Equal(4, ((InductionTask)loaded.Tokenizer!).MaxRepeat);
    }

    [Fact]
    public void AnInstanceAndAProcessedModelKeepTheTokenizerAndSaveIt()
    {
        using var scope = NewDisposeScope();
        var toy = new ToyLanguage(12);
        using var batched = HookedTransformer.Batched(ModelTests.Tiny() with { d_vocab = ToyLanguage.Vocab }, [1, 2]);
        batched.Tokenizer = toy;
        using var single = batched.Instance(1);
        using var processed = single.ProcessWeights();
        Assert.Same(toy, single.Tokenizer);
        Assert.Same(toy, processed.Tokenizer);
        string path = PathOf("processed.safetensors");
        processed.Save(path);
        using var loaded = HookedTransformer.Load(path);
        Assert.Equal(["BOS", "N3s", "V3s", "."], loaded.ToStrTokens("N3s V3s ."));
    }

    [Fact]
    public void AModelWithoutATokenizerSavesAndLoadsWithout()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        string path = PathOf("plain.safetensors");
        model.Save(path);
        Assert.False(Metadata(path).ContainsKey(Checkpoint.TokenizerKey));
        using var loaded = HookedTransformer.Load(path);
        Assert.Null(loaded.Tokenizer);
        Assert.Contains("the model has no tokenizer", Assert.Throws<InvalidOperationException>(() => loaded.ToStrTokens("t1")).Message);
    }

    [Fact]
    public void ACheckpointFromBeforeTokenizersLoads()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        string path = PathOf("old.safetensors");
        // What Save wrote before tokenizers were saved: the config and the format, nothing else.
        SafeTensors.Write(path, model.StateDict(), new Dictionary<string, string> { ["config"] = model.Config.ToJson(), ["format"] = "pt" });
        using var loaded = HookedTransformer.Load(path);
        Assert.Null(loaded.Tokenizer);
        var tokens = ModelTests.Tokens(1, 5, 11, 2);
        Assert.True(model.Forward(tokens).equal(loaded.Forward(tokens)).all().item<bool>());
    }

    public static TheoryData<string, string> BadEntries => new()
    {
        { "induction of", "is not valid JSON" },
        { "[1, 2]", "must be a JSON object, got '[1, 2]'" },
        { """{"version": 2, "kind": "gpt2"}""", "has version '2'; this build reads version 1" },
        { """{"kind": "gpt2"}""", "has version '(none)'" },
        { """{"version": "1", "kind": "gpt2"}""", "field 'version' must be an integer, got '\"1\"'" },
        { """{"version": 1, "kind": "bpe"}""", "has kind '\"bpe\"'; known kinds are \"gpt2\", \"induction\", \"toy_language\"" },
        { """{"version": 1}""", "has kind '(none)'" },
        { """{"version": 1, "kind": "induction", "vocab_size": 8, "max_repeat": 4}""", "has no field 'min_repeat'" },
        { """{"version": 1, "kind": "induction", "vocab_size": 8.5, "max_repeat": 4, "min_repeat": 2}""", "field 'vocab_size' must be an integer, got '8.5'" },
        { """{"version": 1, "kind": "induction", "vocab_size": 8, "max_repeat": 4, "min_repeat": 2, "seed": 3}""", "has field 'seed', which a \"induction\" tokenizer does not have (its fields: vocab_size, max_repeat, min_repeat)" },
        { """{"version": 1, "kind": "induction", "vocab_size": 12, "max_repeat": 4, "min_repeat": 2}""", "describes a \"induction\" tokenizer of 12 tokens, more than the config's d_vocab (11)" },
        { """{"version": 1, "kind": "induction", "vocab_size": 8, "max_repeat": 4, "min_repeat": 5}""", "describes no valid \"induction\" tokenizer: minRepeat must be in [1, maxRepeat = 4], got 5" },
        { """{"version": 1, "kind": "induction", "vocab_size": 2, "max_repeat": 4, "min_repeat": 2}""", "vocab size must be at least 3, got 2" },
        { """{"version": 1, "kind": "induction", "vocab_size": 8, "max_repeat": 2000000000, "min_repeat": 2}""", "field 'max_repeat' is 2000000000, outside [1, 1048576]" },
        { """{"version": 1, "kind": "gpt2"}""", "describes a \"gpt2\" tokenizer of 50257 tokens, more than the config's d_vocab (11)" },
        { """{"version": 1, "kind": "toy_language", "sequence_length": 8}""", "describes a \"toy_language\" tokenizer of 46 tokens, more than the config's d_vocab (11)" },
        { """{"version": 1, "kind": "gpt2", "kind": "induction"}""", "is not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(BadEntries))]
    public void AnUnknownOrMalformedTokenizerEntryNamesTheFileAndTheValue(string entry, string expected)
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        string path = PathOf("bad.safetensors");
        SafeTensors.Write(path, model.StateDict(),
            new Dictionary<string, string> { ["config"] = model.Config.ToJson(), [Checkpoint.TokenizerKey] = entry });
        var e = Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains($"__metadata__[\"{Checkpoint.TokenizerKey}\"]", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void AToyLanguageEntryIsCheckedByTheTaskItself()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny() with { d_vocab = ToyLanguage.Vocab });
        string path = PathOf("toy.safetensors");
        SafeTensors.Write(path, model.StateDict(), new Dictionary<string, string>
        {
            ["config"] = model.Config.ToJson(), [Checkpoint.TokenizerKey] = """{"version": 1, "kind": "toy_language", "sequence_length": 1}""",
        });
        var e = Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(path));
        Assert.Contains("sequence length must be at least 2, got 1", e.Message);
    }

    /// <summary>A user's tokenizer, which the checkpoint format has no way to describe.</summary>
    private sealed class Letters : ITokenizer
    {
        public int VocabSize => 11;
        public int? BosToken => 0;
        public IReadOnlyList<int> Encode(string text) => text.Select(c => c - 'a' + 1).ToArray();
        public string Decode(IEnumerable<int> ids) => string.Concat(ids.Select(TokenText));
        public string TokenText(int id) => id == 0 ? "<s>" : ((char)('a' + id - 1)).ToString();
    }

    [Fact]
    public void ACustomTokenizerIsRefusedAtSaveAndNothingIsWritten()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny()) { Tokenizer = new Letters() };
        string path = PathOf("custom.safetensors");
        var e = Assert.Throws<NotSupportedException>(() => model.Save(path));
        Assert.Contains(typeof(Letters).FullName!, e.Message);
        Assert.Contains("set model.Tokenizer = null to save the model without it", e.Message);
        Assert.Empty(Directory.GetFiles(dir));

        // An earlier checkpoint at that path stays as it was; without the tokenizer the model saves.
        model.Tokenizer = null;
        model.Save(path);
        byte[] before = File.ReadAllBytes(path);
        model.Tokenizer = new Letters();
        Assert.Throws<NotSupportedException>(() => model.Save(path));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(dir));
    }
}
