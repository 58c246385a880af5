using System.Text;
using System.Text.RegularExpressions;
using MechInterp.Analysis.Patching;
using MechInterp.Circuits;
using MechInterp.Data;
using MechInterp.Hooks;
using MechInterp.IO;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>
/// README's examples run: each section's C# block is, line for line, the body of a test here (between its
/// "README:" and "END README" markers), and its F# blocks run in F# Interactive.
/// </summary>
public class ReadmeExampleTests
{
    private static readonly string[] Sections = ["Gradients: backward hooks and gradient caches", "Weight processing", "Attribution patching", "Tokens, text and generation", "GPT-2 weights", "Circuits and hook names"];

    /// <summary>The directory the GPT-2 examples name; the tests put a small GPT-2-shaped checkpoint there.</summary>
    private const string Gpt2Directory = "path/to/gpt2";

    /// <summary>The code blocks in one language of the README section under this "## " heading.</summary>
    internal static List<string> Blocks(string heading, string language)
    {
        var readme = File.ReadAllText(Path.Combine(ScriptTests.RepoRoot(), "README.md"));
        int start = readme.IndexOf($"\n## {heading}\n", StringComparison.Ordinal);
        Assert.True(start >= 0, $"README has no section '## {heading}'");
        int end = readme.IndexOf("\n## ", start + 4, StringComparison.Ordinal);
        var section = end < 0 ? readme[start..] : readme[start..end];
        return Regex.Matches(section, $"```{language}\n(.*?)```", RegexOptions.Singleline).Select(m => m.Groups[1].Value).ToList();
    }

    private static string[] Lines(string code) => code.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0).ToArray();

    [Theory]
    [InlineData("Gradients: backward hooks and gradient caches")]
    [InlineData("Weight processing")]
    [InlineData("Attribution patching")]
    [InlineData("GPT-2 weights")]
    [InlineData("Tokens, text and generation")]
    [InlineData("Circuits and hook names")]
    public void EachCSharpExampleIsTheBodyOfATestHere(string heading)
    {
        var source = File.ReadAllText(Path.Combine(ScriptTests.RepoRoot(), "tests", "Core.Tests", "ReadmeExampleTests.cs"));
        var marker = $"// README: {heading}\n";
        int start = source.IndexOf(marker, StringComparison.Ordinal);
        Assert.True(start >= 0, $"no test marked '{marker.Trim()}'");
        start += marker.Length;
        var region = source[start..source.IndexOf("// END README", start, StringComparison.Ordinal)];
        Assert.Equal(Lines(Blocks(heading, "csharp").Single()), Lines(region));
    }

    [Fact]
    public void TheFSharpExamplesRunInFsi()
    {
        var prelude = Path.Combine(ScriptTests.RepoRoot(), "scripts", "Prelude.fsx");
        var script = new StringBuilder($"#load \"{prelude}\"\n");
        int n = 0;
        foreach (var heading in Sections)
            foreach (var block in Blocks(heading, "fsharp"))
            {
                // Each example in a module of its own: they reuse names.
                script.AppendLine($"module Example{n++} =");
                foreach (var line in block.Split('\n').Where(l => !l.StartsWith("#load")))
                    script.AppendLine("    " + line);
            }
        Assert.True(n >= 3);
        var path = Path.Combine(Path.GetTempPath(), $"readme-examples-{Guid.NewGuid():N}.fsx");
        string gpt2;
        using (NewDisposeScope()) gpt2 = Gpt2WeightsTests.WriteCheckpoint(Gpt2WeightsTests.HfTensors(3), Gpt2WeightsTests.ConfigJson());
        File.WriteAllText(path, script.ToString().Replace(Gpt2Directory, gpt2));
        try
        {
            var (code, output) = ScriptTests.RunFsi(path, TimeSpan.FromMinutes(5));
            Assert.True(code == 0, $"README's F# examples exited with {code}:\n{output}\n{script}");
            Assert.Contains("d metric / d pattern of layer 1", output);
            Assert.Contains("RMSPre; W_U mean over the vocabulary", output);
            Assert.Contains("head (attn.hook_z): correlation", output);
            Assert.Contains("tokens: [|\"<|endoftext|>\"; \"Hello\"; \" world\"|]", output);
            Assert.Contains("after load: [|\"<|endoftext|>\"; \"Hello\"; \" world\"|]", output);
            Assert.Contains("QK of L1H3: [|32L; 32L|]", output);
            Assert.Contains("accumulated resid: [|\"0_pre\"; \"1_pre\"; \"final_post\"|]", output);
            Assert.Contains("GPT-2: 2 layers, 4 heads, d_model 16", output);
        }
        finally
        {
            File.Delete(path);
            Directory.Delete(gpt2, recursive: true);
        }
    }

    [Fact]
    public void BackwardHooksExample()
    {
        using var scope = NewDisposeScope();
        // README: Gradients: backward hooks and gradient caches
        // using MechInterp.Hooks; using MechInterp.Model; using static TorchSharp.torch;
        using var model = new HookedTransformer(new DecoderConfig { d_model = 32, n_layers = 2, n_heads = 4, d_vocab = 20, n_ctx = 10 });
        var tokens = randint(0, 20, [2, 10]);
        Tensor LogitDiff(Tensor logits) => (logits.select(1, -1).select(1, 3) - logits.select(1, -1).select(1, 7)).mean();
        var (value, acts, grads) = model.RunWithCacheAndGradients(tokens, LogitDiff, name => name.EndsWith("hook_resid_post"));
        using (acts)
        using (grads)
            Console.WriteLine($"metric {value.item<float>():F3}; d metric / d resid_post.0: [{string.Join(", ", grads[HookNames.ResidPost(0)].shape)}]");
        // A backward hook may replace the gradient: nothing flows back through layer 1's attention output.
        model.RunWithBackwardHooks(tokens, LogitDiff, [new Hook(HookNames.AttnOut(1), (grad, _) => zeros_like(grad))]);
        // END README
    }

    [Fact]
    public void WeightProcessingExample()
    {
        using var scope = NewDisposeScope();
        // README: Weight processing
        // using MechInterp.Model; using static TorchSharp.torch;
        using var model = new HookedTransformer(new DecoderConfig { d_model = 32, n_layers = 2, n_heads = 4, d_vocab = 20, n_ctx = 10 });
        using var processed = model.ProcessWeights();          // all four steps
        Console.WriteLine(processed.Config.normalization_type); // LNPre: the norms' weights are in W_Q, W_K, W_V, W_in, W_U
        var tokens = randint(0, 20, [2, 10]);
        using (no_grad())
        {
            var change = (model.forward(tokens).log_softmax(-1) - processed.forward(tokens).log_softmax(-1)).abs().max();
            Console.WriteLine($"max log-prob change {change.item<float>():E1}");
        }
        processed.Save(Path.Combine(Path.GetTempPath(), "processed.safetensors"));   // loads as LNPre
        // END README
        Assert.Equal("LNPre", HookedTransformer.Load(Path.Combine(Path.GetTempPath(), "processed.safetensors")).Config.normalization_type);
    }

    [Fact]
    public void AttributionPatchingExample()
    {
        using var scope = NewDisposeScope();
        // README: Attribution patching
        // using MechInterp.Analysis.Patching; using MechInterp.Model; using static TorchSharp.torch;
        using var model = new HookedTransformer(new DecoderConfig { d_model = 32, n_layers = 2, n_heads = 4, attn_only = true, d_vocab = 20, n_ctx = 10 });
        var (clean, corrupted) = (randint(0, 20, [4, 10]), randint(0, 20, [4, 10]));
        var estimates = AttributionPatching.estimate(model, clean, corrupted, logits => logits.select(1, -1).select(1, 3).mean());
        foreach (var e in estimates)
            Console.WriteLine($"{e.Component}: largest estimated change {e.Values.Cast<double>().Max(v => Math.Abs(v - e.Corrupted)):F3}");
        // END README
        Assert.Equal(3, estimates.Length);
    }

    [Fact]
    public void Gpt2WeightsExample()
    {
        using var scope = NewDisposeScope();
        Directory.CreateDirectory(Gpt2Directory);   // relative to the test's working directory, under bin/
        var written = Gpt2WeightsTests.WriteCheckpoint(Gpt2WeightsTests.HfTensors(4), Gpt2WeightsTests.ConfigJson());
        foreach (var file in Directory.GetFiles(written))
            File.Copy(file, Path.Combine(Gpt2Directory, Path.GetFileName(file)), overwrite: true);
        Directory.Delete(written, recursive: true);
        // README: GPT-2 weights
        // using MechInterp.Hooks; using MechInterp.IO; using static TorchSharp.torch;
        using var gpt2 = Gpt2Weights.Load("path/to/gpt2");            // config.json + model.safetensors
        Console.WriteLine(gpt2.Config.ToJson());                        // d_model 768, n_heads 12, act_fn gelu_new ... for GPT-2 small
        var (logits, cache) = gpt2.RunWithCache(tensor(new long[] { 1, 2, 3 }).unsqueeze(0), n => n.EndsWith("hook_pattern"));
        using (cache) Console.WriteLine(string.Join(", ", cache[HookNames.Pattern(0)].shape));
        // END README
        Assert.Equal(new long[] { 1, 3, 50 }, logits.shape);
    }

    [Fact]
    public void TokensExample()
    {
        using var scope = NewDisposeScope();
        // README: Tokens, text and generation
        // using MechInterp.Data; using MechInterp.Model;
        var task = new InductionTask(vocabSize: 64, maxRepeat: 16);
        using var model = new HookedTransformer(new DecoderConfig { d_model = 64, n_layers = 2, n_heads = 8, attn_only = true,
            positional_embedding_type = "rotary", d_vocab = task.VocabSize, n_ctx = task.SequenceLength }) { Tokenizer = task };
        var tokens = model.ToTokens("t5 t2 t9 t5");                            // [1, 5]: BOS first
        Console.WriteLine(string.Join(" | ", model.ToStrTokens(tokens)));       // BOS | t5 | t2 | t9 | t5
        Console.WriteLine(model.Generate("t5 t2 t9 t5", 3));                    // greedy: a trained induction model continues t2 t9 ...
        var sampled = model.Generate(tokens, 3, temperature: 0.8, topK: 5, seed: 1);   // [1, 8], the same for the same seed
        model.Save(Path.Combine(Path.GetTempPath(), "tokenized.safetensors"));  // the checkpoint records the tokenizer
        using var loaded = HookedTransformer.Load(Path.Combine(Path.GetTempPath(), "tokenized.safetensors"));
        Console.WriteLine(string.Join(" | ", loaded.ToStrTokens("t5 t2")));     // BOS | t5 | t2: the task came back with the model
        // END README
        Assert.Equal(["BOS", "t5", "t2", "t9", "t5"], model.ToStrTokens(tokens));
        Assert.Equal(new long[] { 1, 8 }, sampled.shape);
        Assert.Equal(["BOS", "t5", "t2"], loaded.ToStrTokens("t5 t2"));
    }

    [Fact]
    public void CircuitsExample()
    {
        using var scope = NewDisposeScope();
        // README: Circuits and hook names
        // using MechInterp.Circuits; using MechInterp.Hooks; using MechInterp.Model;
        using var model = new HookedTransformer(new DecoderConfig { d_model = 32, n_layers = 2, n_heads = 4, attn_only = true, d_vocab = 20, n_ctx = 10 });
        using var processed = model.ProcessWeights();
        Console.WriteLine($"L1H0 copying score {HeadCircuits.CopyingScore(processed, 1, 0):F2}");
        var kComposition = HeadCircuits.AllCompositionScores(processed, Composition.K);      // [layer, head, layer, head]
        Console.WriteLine($"K-composition L0H2 -> L1H0: {kComposition[0, 2, 1, 0]:F3}; OV of L0H2 is [{string.Join(", ", HeadCircuits.OV(processed, 0, 2).Shape)}]");
        var (logits, cache) = processed.RunWithCache(TorchSharp.torch.randint(0, 20, [1, 10]), name => name == HookNames.Pattern(1));
        using (cache) Console.WriteLine(string.Join(", ", cache[HookNames.Get("pattern", 1)].shape));
        var (_, residual) = processed.RunWithCache(TorchSharp.torch.randint(0, 20, [1, 10]), CacheHelpers.ResidualHookNames(processed).Contains);
        using (residual) Console.WriteLine($"{string.Join(", ", residual.DecomposeResid(processed).Labels)}; resid_post stacked [{string.Join(", ", residual.StackActivation(processed, "resid_post").shape)}]");
        // END README
        Assert.InRange(kComposition[0, 2, 1, 0], 0, 1);
    }
}
