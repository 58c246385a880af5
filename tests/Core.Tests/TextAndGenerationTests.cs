using System.Diagnostics;
using MechInterp.Data;
using MechInterp.Model;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>Tokenizers, the model's text helpers, and generation with an induction model whose weights are written out by hand.</summary>
public class TextAndGenerationTests(ITestOutputHelper output)
{
    private const int V = 12, P = 16;
    private const int Tok = 0, Pos = V, Prev = V + P, Out = 2 * V + P;   // subspaces of the residual stream

    /// <summary>
    /// Two one-head attention layers, no norms: layer 0 attends from i to i − 1 by position and writes that token into
    /// "prev"; layer 1 attends to the positions whose previous token is the current one and writes their token into
    /// "out", which the unembedding reads. That is the induction circuit, so the model continues a repeat.
    /// </summary>
    internal static HookedTransformer InductionModel()
    {
        var model = new HookedTransformer(new DecoderConfig
        {
            d_model = 3 * V + P, n_layers = 2, n_heads = 1, d_head = P, d_vocab = V, n_ctx = P, attn_only = true,
            normalization_type = "none", positional_embedding_type = "standard",
        });
        const float c = 10;
        using var _ = no_grad();
        foreach (var p in model.parameters()) p.zero_();
        for (int t = 0; t < V; t++) model.embed.W_E[t, Tok + t] = 1;
        for (int i = 0; i < P; i++) model.pos_embed!.W_pos[i, Pos + i] = 1;
        var a0 = model.blocks[0].attn;
        for (int i = 1; i < P; i++) a0.W_Q[0, Pos + i, i - 1] = c;    // query at i asks for position i − 1
        for (int j = 0; j < P; j++) a0.W_K[0, Pos + j, j] = c;
        var a1 = model.blocks[1].attn;
        for (int t = 0; t < V; t++)
        {
            a0.W_V[0, Tok + t, t] = 1;
            a0.W_O[0, t, Prev + t] = 1;
            a1.W_Q[0, Tok + t, t] = c;                                   // query: the current token
            a1.W_K[0, Prev + t, t] = c;                                  // key: the token before the key position
            a1.W_V[0, Tok + t, t] = 1;
            a1.W_O[0, t, Out + t] = 1;
            model.unembed.W_U[Out + t, t] = 10;
        }
        model.Tokenizer = new InductionTask(V, 7);
        return model;
    }

    [Fact]
    public void AnInductionModelCopiesTheRepeatGreedily()
    {
        using var scope = NewDisposeScope();
        using var model = InductionModel();
        Assert.Equal("t5 t2 t9 t1 t7 t3 t5 t2 t9 t1 t7 t3", model.Generate("t5 t2 t9 t1 t7 t3 t5 t2", 4));
        var tokens = model.ToTokens("t4 t8 t6 t4");
        Assert.Equal(new long[] { 0, 4, 8, 6, 4 }, tokens.data<long>().ToArray());
        Assert.Equal(["BOS", "t4", "t8", "t6", "t4", "t8", "t6"], model.ToStrTokens(model.Generate(tokens, 2)));
    }

    [Fact]
    public void SamplingIsSeededAndTopOneIsGreedy()
    {
        using var scope = NewDisposeScope();
        using var model = InductionModel();
        var prompt = model.ToTokens("t5 t2 t9 t1");
        var greedy = model.Generate(prompt, 6);
        Assert.True(model.Generate(prompt, 6, temperature: 1.5, topK: 1, seed: 3).eq(greedy).all().item<bool>());
        var a = model.Generate(prompt, 6, temperature: 5, seed: 11);
        var b = model.Generate(prompt, 6, temperature: 5, seed: 11);
        Assert.True(a.eq(b).all().item<bool>());
        // At temperature 5 over 12 tokens some seed leaves the greedy path: sampling is not argmax.
        Assert.Contains(Enumerable.Range(0, 10), s => !model.Generate(prompt, 6, temperature: 5, seed: s).eq(greedy).all().item<bool>());
        Assert.Throws<ArgumentException>(() => model.Generate(prompt, 20));
        Assert.Throws<ArgumentOutOfRangeException>(() => model.Generate(prompt, 2, temperature: -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => model.Generate(prompt, 2, topK: 13));
    }

    [Fact]
    public void TaskTokenizersRoundTripTheirNames()
    {
        var toy = new ToyLanguage(16);
        var ids = toy.Encode("BOS A2 N3s V3s N1p .");
        Assert.Equal("BOS A2 N3s V3s N1p .", toy.Decode(ids));
        var e = Assert.Throws<ArgumentException>(() => toy.Encode("BOS N9x"));
        Assert.Contains("'N9x' is not a token name", e.Message);
        using var model = new HookedTransformer(new DecoderConfig { d_model = 8, n_layers = 1, n_heads = 2, d_vocab = 10, n_ctx = 8 });
        Assert.Throws<InvalidOperationException>(() => model.ToTokens("t1"));
        Assert.Throws<ArgumentException>(() => model.Tokenizer = toy);   // 46 tokens, d_vocab 10
    }

    [Fact]
    public void Gpt2TokenizerEncodesAsGpt2()
    {
        var gpt2 = new Gpt2Tokenizer();
        Assert.Equal([15496, 995], gpt2.Encode("Hello world"));
        Assert.Equal(" world", gpt2.TokenText(995));
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(new DecoderConfig { d_model = 8, n_layers = 1, n_heads = 2, d_vocab = 50257, n_ctx = 8, attn_only = true });
        model.Tokenizer = gpt2;
        Assert.Equal(["<|endoftext|>", "Hello", " world"], model.ToStrTokens("Hello world"));
        Assert.Equal("<|endoftext|>Hello world", model.ToText(model.ToTokens("Hello world")));
    }

    /// <summary>
    /// Whether a key-value cache would pay: a cached step runs one position instead of the whole sequence, so it can
    /// save at most the gap between a forward at full length and one at length 1.
    /// </summary>
    [Fact]
    public void ForwardTimeAtFullLengthAgainstOnePosition()
    {
        using var model = new HookedTransformer(new DecoderConfig { d_model = 64, n_layers = 2, n_heads = 8, attn_only = true, positional_embedding_type = "rotary", d_vocab = 64, n_ctx = 33 });
        double Time(int pos)
        {
            using var _ = no_grad();
            var tokens = randint(0, 64, [1, pos]);
            for (int i = 0; i < 10; i++) using (NewDisposeScope()) model.forward(tokens);
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < 50; i++) using (NewDisposeScope()) model.forward(tokens);
            return clock.Elapsed.TotalMilliseconds / 50;
        }
        // One libtorch thread, as the Trainer uses for models this small: the measurement is of the work, not of contention.
        var (one, full) = Settings.WithThreads(1, () => (Time(1), Time(33)));
        output.WriteLine($"forward at 1 position {one:F3} ms, at 33 positions {full:F3} ms: a KV cache saves at most {full / one:F2}x a step");
        Assert.True(full > 0 && one > 0);
    }
}
