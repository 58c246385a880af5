using MechInterp.IO;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>
/// A GPT-2-shaped checkpoint written here in HuggingFace's layout, with random weights: the converted model's logits
/// equal GPT-2's forward written out below from the HuggingFace tensors (Conv1D, fused c_attn), sharing no code with
/// the converter.
/// </summary>
public class Gpt2WeightsTests
{
    private const int Embd = 16, Heads = 4, Layers = 2, Vocab = 50, Positions = 12;

    internal static string ConfigJson(string activation = "gelu_new") =>
        $$"""{"model_type": "gpt2", "n_embd": {{Embd}}, "n_head": {{Heads}}, "n_layer": {{Layers}}, "vocab_size": {{Vocab}}, "n_positions": {{Positions}}, "n_inner": null, "activation_function": "{{activation}}", "layer_norm_epsilon": 1e-05, "architectures": ["GPT2LMHeadModel"]}""";

    /// <summary>HuggingFace GPT-2 tensors with random values, the attention-mask buffers included.</summary>
    internal static Dictionary<string, Tensor> HfTensors(int seed)
    {
        var g = new Generator((ulong)seed);
        Tensor R(params long[] shape) => randn(shape, generator: g).mul(0.3);
        var t = new Dictionary<string, Tensor> { ["wte.weight"] = R(Vocab, Embd), ["wpe.weight"] = R(Positions, Embd), ["ln_f.weight"] = R(Embd).add(1), ["ln_f.bias"] = R(Embd) };
        for (int l = 0; l < Layers; l++)
        {
            string h = $"h.{l}";
            t[$"{h}.ln_1.weight"] = R(Embd).add(1);
            t[$"{h}.ln_1.bias"] = R(Embd);
            t[$"{h}.attn.c_attn.weight"] = R(Embd, 3 * Embd);
            t[$"{h}.attn.c_attn.bias"] = R(3 * Embd);
            t[$"{h}.attn.c_proj.weight"] = R(Embd, Embd);
            t[$"{h}.attn.c_proj.bias"] = R(Embd);
            t[$"{h}.ln_2.weight"] = R(Embd).add(1);
            t[$"{h}.ln_2.bias"] = R(Embd);
            t[$"{h}.mlp.c_fc.weight"] = R(Embd, 4 * Embd);
            t[$"{h}.mlp.c_fc.bias"] = R(4 * Embd);
            t[$"{h}.mlp.c_proj.weight"] = R(4 * Embd, Embd);
            t[$"{h}.mlp.c_proj.bias"] = R(Embd);
            t[$"{h}.attn.bias"] = ones(1, 1, Positions, Positions).tril();
            t[$"{h}.attn.masked_bias"] = tensor(-1e4f);
        }
        return t;
    }

    /// <summary>GPT-2's forward (HuggingFace modeling_gpt2) written out from its own tensors.</summary>
    private static Tensor Reference(Dictionary<string, Tensor> w, Tensor tokens)
    {
        long batch = tokens.shape[0], T = tokens.shape[1], D = Embd / Heads;
        Tensor Ln(Tensor x, string p) => nn.functional.layer_norm(x, [Embd], w[$"{p}.weight"], w[$"{p}.bias"], 1e-5);
        Tensor Conv1D(Tensor x, string p) => x.matmul(w[$"{p}.weight"]).add(w[$"{p}.bias"]);
        var x = w["wte.weight"][tokens] + w["wpe.weight"][arange(T)];                         // [batch, T, C]
        var mask = ones(T, T, dtype: ScalarType.Bool).tril();
        for (int l = 0; l < Layers; l++)
        {
            var qkv = Conv1D(Ln(x, $"h.{l}.ln_1"), $"h.{l}.attn.c_attn");                       // [batch, T, 3C]
            var (q, k, v) = (qkv[.., .., ..Embd], qkv[.., .., Embd..(2 * Embd)], qkv[.., .., (2 * Embd)..]);
            Tensor Split(Tensor t) => t.view(batch, T, Heads, D).transpose(1, 2);                // [batch, H, T, D]
            var att = Split(q).matmul(Split(k).transpose(-1, -2)).div(Math.Sqrt(D)).masked_fill(mask.logical_not(), float.NegativeInfinity).softmax(-1);
            var y = att.matmul(Split(v)).transpose(1, 2).reshape(batch, T, Embd);
            x = x + Conv1D(y, $"h.{l}.attn.c_proj");
            var hidden = Conv1D(Ln(x, $"h.{l}.ln_2"), $"h.{l}.mlp.c_fc");
            var gelu = hidden.mul(0.5).mul(hidden.add(hidden.pow(3).mul(0.044715)).mul(Math.Sqrt(2 / Math.PI)).tanh().add(1));
            x = x + Conv1D(gelu, $"h.{l}.mlp.c_proj");
        }
        return Ln(x, "ln_f").matmul(w["wte.weight"].t());                                        // tied lm_head
    }

    internal static string WriteCheckpoint(Dictionary<string, Tensor> tensors, string config)
    {
        var dir = Directory.CreateTempSubdirectory("gpt2-").FullName;
        File.WriteAllText(Path.Combine(dir, "config.json"), config);
        SafeTensors.Write(Path.Combine(dir, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        return dir;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ConvertedLogitsEqualGpt2sForwardFromTheHuggingFaceTensors(bool prefixed)
    {
        using var scope = NewDisposeScope();
        var hf = HfTensors(1);
        var file = prefixed ? hf.ToDictionary(kv => "transformer." + kv.Key, kv => kv.Value) : new(hf);
        if (prefixed) file["lm_head.weight"] = hf["wte.weight"];   // GPT2LMHeadModel saved whole: the tied head appears too
        var dir = WriteCheckpoint(file, ConfigJson());
        try
        {
            using var model = Gpt2Weights.Load(dir);
            Assert.Equal(Embd, model.Config.d_model);
            Assert.Equal(4 * Embd, model.Config.DMlp);
            Assert.Equal("gelu_new", model.Config.act_fn);
            Assert.Null(model.Tokenizer);   // 50 tokens: not GPT-2's vocabulary
            var tokens = randint(0, Vocab, [3, Positions], generator: new Generator(2));
            using var _ = no_grad();
            var ours = model.forward(tokens);
            var reference = Reference(hf, tokens);
            double diff = (ours - reference).abs().max().item<float>();
            Assert.True(diff < 1e-4, $"converted logits differ from GPT-2's forward by {diff} (logits up to {reference.abs().max().item<float>()})");
            Assert.True(reference.std().item<float>() > 0.1);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void AModelWithGpt2sVocabularyGetsGpt2sTokenizerAndSavesIt()
    {
        using var scope = NewDisposeScope();
        var hf = HfTensors(3);
        hf["wte.weight"] = randn(Data.Gpt2Tokenizer.Vocab, Embd).mul(0.3);
        var dir = WriteCheckpoint(hf, ConfigJson().Replace($"\"vocab_size\": {Vocab},", $"\"vocab_size\": {Data.Gpt2Tokenizer.Vocab},"));
        try
        {
            using var model = Gpt2Weights.Load(dir);
            Assert.IsType<Data.Gpt2Tokenizer>(model.Tokenizer);
            Assert.Equal(["<|endoftext|>", "Hello", " world"], model.ToStrTokens("Hello world"));
            string saved = Path.Combine(dir, "converted.safetensors");
            model.Save(saved);
            using var loaded = HookedTransformer.Load(saved);
            Assert.IsType<Data.Gpt2Tokenizer>(loaded.Tokenizer);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void UnknownNamesWrongShapesAndMissingTensorsAreNamed()
    {
        using var scope = NewDisposeScope();
        var hf = HfTensors(2);
        hf["h.0.attn.c_atn.weight"] = hf["h.0.attn.c_attn.weight"];
        hf["h.1.mlp.c_fc.weight"] = zeros(Embd, 3 * Embd);
        hf.Remove("ln_f.bias");
        var dir = WriteCheckpoint(hf, ConfigJson());
        try
        {
            var e = Assert.Throws<InvalidDataException>(() => Gpt2Weights.Load(dir));
            Assert.Contains("tensor 'h.0.attn.c_atn.weight' is not a GPT-2 weight", e.Message);
            Assert.Contains("tensor 'h.1.mlp.c_fc.weight' has shape [16, 48], expected [16, 64]", e.Message);
            Assert.Contains("tensor 'ln_f.bias' is missing", e.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void AConfigThisModelCannotRunIsRefused()
    {
        var e = Assert.Throws<ArgumentException>(() => Gpt2Weights.ConfigFromJson(ConfigJson("gelu_fast")));
        Assert.Contains("activation_function 'gelu_fast'", e.Message);
        var gpt2 = Gpt2Weights.ConfigFromJson(ConfigJson().Replace("\"n_inner\": null", "\"n_inner\": 40"));
        Assert.Equal(40, gpt2.d_mlp);
        Assert.Throws<DirectoryNotFoundException>(() => Gpt2Weights.Load("/nonexistent/gpt2"));
    }
}
