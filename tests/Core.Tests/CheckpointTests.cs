using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using MechInterp.Hooks;
using MechInterp.IO;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Tests;

public sealed class CheckpointTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("mechinterp-ckpt-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private string Saved(DecoderConfig cfg, out HookedTransformer model)
    {
        model = new HookedTransformer(cfg);
        string path = Path.Combine(dir, "model.safetensors");
        model.Save(path);
        return path;
    }

    [Fact]
    public void SaveThenLoadGivesIdenticalLogits()
    {
        using var scope = NewDisposeScope();
        string path = Saved(ModelTests.Tiny(experts: 4) with { positional_embedding_type = "rotary" }, out var model);
        using var loaded = HookedTransformer.Load(path);
        var tokens = ModelTests.Tokens(2, 7, 11, 9);
        Assert.True(model.Forward(tokens).equal(loaded.Forward(tokens)).all().item<bool>());
        Assert.Equal(model.Config with { d_head = 4 }, loaded.Config);
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
        model.Dispose();
    }

    [Fact]
    public void TheHeaderIsSafetensorsWithTransformerLensNamesAndShapes()
    {
        using var scope = NewDisposeScope();
        string path = Saved(ModelTests.Tiny(), out var model);
        model.Dispose();
        byte[] bytes = File.ReadAllBytes(path);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!.AsObject();
        long[] Shape(string name) => header[name]!["shape"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
        Assert.Equal(new long[] { 11, 16 }, Shape("embed.W_E"));
        Assert.Equal(new long[] { 4, 16, 4 }, Shape("blocks.0.attn.W_Q"));
        Assert.Equal(new long[] { 4, 4 }, Shape("blocks.0.attn.b_Q"));
        Assert.Equal(new long[] { 4, 4, 16 }, Shape("blocks.1.attn.W_O"));
        Assert.Equal(new long[] { 16, 24 }, Shape("blocks.0.mlp.W_in"));
        Assert.Equal(new long[] { 16, 11 }, Shape("unembed.W_U"));
        Assert.Equal(new long[] { 16 }, Shape("blocks.1.ln2.w"));
        Assert.Equal("F32", header["embed.W_E"]!["dtype"]!.GetValue<string>());
        Assert.Equal(16, JsonNode.Parse(header["__metadata__"]!["config"]!.GetValue<string>())!["d_model"]!.GetValue<int>());
        Assert.Equal(0, (8 + n) % 8);
    }

    [Fact]
    public void ATruncatedFileSaysSo()
    {
        using var scope = NewDisposeScope();
        string path = Saved(ModelTests.Tiny(), out var model);
        model.Dispose();
        using (var f = new FileStream(path, FileMode.Open)) f.SetLength(f.Length - 10);
        var e = Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void AHeaderLongerThanTheFileSaysSo()
    {
        string path = Path.Combine(dir, "bad.safetensors");
        var bytes = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 1000);
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path));
        Assert.Contains("the header claims 1000 bytes but the file has 8", e.Message);
    }

    [Fact]
    public void MissingMisshapedAndWrongDtypeTensorsAreNamed()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var state = model.StateDict().ToDictionary(kv => kv.Key, kv => kv.Value);
        string config = model.Config.ToJson();
        var meta = new Dictionary<string, string> { ["config"] = config };
        string path = Path.Combine(dir, "edited.safetensors");

        var missing = new Dictionary<string, Tensor>(state);
        missing.Remove("blocks.1.attn.W_K");
        SafeTensors.Write(path, missing, meta);
        Assert.Contains("tensor 'blocks.1.attn.W_K' is missing (expected [4, 16, 4])",
            Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(path)).Message);

        var misshaped = new Dictionary<string, Tensor>(state) { ["unembed.W_U"] = zeros(11, 16) };
        SafeTensors.Write(path, misshaped, meta);
        Assert.Contains("tensor 'unembed.W_U' has shape [11, 16], expected [16, 11]",
            Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(path)).Message);

        var wrongType = new Dictionary<string, Tensor>(state) { ["embed.W_E"] = zeros(new long[] { 11, 16 }, dtype: ScalarType.Float64) };
        SafeTensors.Write(path, wrongType, meta);
        Assert.Contains("tensor 'embed.W_E' has dtype F64, expected F32",
            Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(path)).Message);
    }

    [Fact]
    public void AFailedWriteLeavesTheOldFileAndNoTemporary()
    {
        using var scope = NewDisposeScope();
        string path = Saved(ModelTests.Tiny(), out var model);
        model.Dispose();
        byte[] before = File.ReadAllBytes(path);
        var unsupported = new Dictionary<string, Tensor> { ["x"] = zeros(new long[] { 2 }, dtype: ScalarType.ComplexFloat32) };
        Assert.Throws<NotSupportedException>(() => SafeTensors.Write(path, unsupported));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
    }

    [Fact]
    public void ActivationCachesUseTheSameFormat()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var (_, cache) = model.RunWithCache(ModelTests.Tokens(1, 4, 11, 3), n => n.Contains("resid"));
        string path = Path.Combine(dir, "cache.safetensors");
        using (cache)
        {
            cache.Save(path);
            using var back = ActivationCache.Load(path);
            Assert.Equal(cache.Keys.ToHashSet(), back.Keys.ToHashSet());
            Assert.True(cache[HookNames.ResidPost(1)].equal(back[HookNames.ResidPost(1)]).all().item<bool>());
        }
    }
}
