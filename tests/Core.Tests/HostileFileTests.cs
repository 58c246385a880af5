using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using MechInterp.IO;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>
/// Checkpoints and safetensors files written by a careless user or an attacker: every one is rejected with one
/// exception type naming the file and the problem, in a message of bounded length, before anything is allocated.
/// </summary>
public sealed class HostileFileTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("mechinterp-hostile-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    /// <summary>A valid tiny checkpoint whose header is then edited in place (the data stays as saved).</summary>
    private string EditedCheckpoint(Action<JsonObject> editHeader, string name = "edited.safetensors")
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        string path = Path.Combine(dir, name);
        model.Save(path);
        byte[] bytes = File.ReadAllBytes(path);
        int n = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, n))!.AsObject();
        editHeader(header);
        File.WriteAllBytes(path, Raw(Encoding.UTF8.GetBytes(header.ToJsonString()), bytes[(8 + n)..]));
        return path;
    }

    /// <summary>An edit of the config inside the checkpoint's metadata.</summary>
    private static Action<JsonObject> Config(Action<JsonObject> edit) => header =>
    {
        var config = JsonNode.Parse(header["__metadata__"]!["config"]!.GetValue<string>())!.AsObject();
        edit(config);
        header["__metadata__"]!["config"] = config.ToJsonString();
    };

    private static byte[] Raw(byte[] header, byte[] data)
    {
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        return bytes;
    }

    private string RawFile(string header, int dataBytes = 0) => RawFile(Encoding.UTF8.GetBytes(header), dataBytes);

    private string RawFile(byte[] header, int dataBytes = 0)
    {
        string path = Path.Combine(dir, $"raw-{Guid.NewGuid():N}.safetensors");
        File.WriteAllBytes(path, Raw(header, new byte[dataBytes]));
        return path;
    }

    private static InvalidDataException Rejected(string path, Action read)
    {
        var e = Assert.Throws<InvalidDataException>(read);
        Assert.StartsWith(path, e.Message);
        Assert.InRange(e.Message.Length, 1, SafeTensors.MaxMessageChars);
        return e;
    }

    [Theory]
    [InlineData("d_model", 536870913)]   // 2^29 + 1: 21 GB of randomly initialized weights on today's main
    [InlineData("d_vocab", 20000000)]    // 3 GB and 11 s
    [InlineData("n_ctx", 100000000)]
    public void AConfigAskingForMoreThanTheFileHoldsIsRejectedByFieldAndValue(string field, int value)
    {
        string path = EditedCheckpoint(Config(c =>
        {
            c[field] = value;
            if (field == "d_model") c["d_mlp"] = 24;
        }));
        var e = Rejected(path, () => HookedTransformer.Load(path));
        Assert.Contains($"{field} ({value}) is more than the", e.Message);
    }

    [Fact]
    public void TwentyThousandLayersGiveAShortMessageNamingNLayers()
    {
        string path = EditedCheckpoint(Config(c => c["n_layers"] = 20000));
        var e = Rejected(path, () => HookedTransformer.Load(path));
        Assert.Contains("n_layers (20000) is more than the", e.Message);
    }

    [Fact]
    public void ShapeProblemsAreListedUpToALimitAndCounted()
    {
        // Within the file's size limits, yet nothing matches: each tensor is a problem, the message stays short.
        string path = EditedCheckpoint(Config(c => c["n_layers"] = 8));
        var e = Rejected(path, () => HookedTransformer.Load(path));
        Assert.Contains("tensor 'blocks.2.", e.Message);
        Assert.Contains("more problems", e.Message);
    }

    [Fact]
    public void ABadConfigInsideACheckpointNamesTheFileAndTheField()
    {
        string path = EditedCheckpoint(Config(c =>
        {
            c["d_model"] = 96;
            c["n_heads"] = 5;
            c["d_head"] = 0;
        }));
        var e = Rejected(path, () => HookedTransformer.Load(path));
        Assert.Contains("d_model (96) must be divisible by n_heads (5)", e.Message);
    }

    [Fact]
    public void ADerivedDMlpThatOverflowsInt32IsAConfigError()
    {
        var e = Assert.Throws<ArgumentException>(() => new DecoderConfig { d_model = 1 << 30, n_heads = 1 << 20 }.Validate());
        Assert.Contains("d_mlp derived as 4 * d_model (4294967296) does not fit in int32", e.Message);
    }

    [Fact]
    public void AByteCountThatWrapsInt64IsRejected()
    {
        // (2^62 + 256) * 4 bytes wraps to 1024: it used to pass as a 1 KiB tensor.
        string path = RawFile("{\"x\":{\"dtype\":\"F32\",\"shape\":[4611686018427388160],\"data_offsets\":[0,1024]}}", 1024);
        var e = Rejected(path, () => SafeTensors.Read(path));
        Assert.Contains("tensor 'x' (F32 [4611686018427388160]) has more bytes than an int64 counts", e.Message);
    }

    [Theory]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "the header names 'a' twice")]
    [InlineData("{\"__metadata__\":[1,2]}", 0, "__metadata__ must be an object of strings, got Array")]
    [InlineData("{\"__metadata__\":{\"k\":3}}", 0, "__metadata__['k'] must be a string, got Number")]
    [InlineData("{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'x' has no dtype")]
    [InlineData("{\"x\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'x' has a dtype that is a Number, not a String")]
    [InlineData("{\"x\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "tensor 'x' has shape[0] = '1.5', not a non-negative int64")]
    [InlineData("{\"x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape[0] = '-1', not a non-negative int64")]
    [InlineData("{\"x\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'x' has unknown dtype 'C64'")]
    [InlineData("{\"x\":[]}", 0, "tensor 'x' must be an object")]
    [InlineData("[]", 0, "the header must be a JSON object, got Array")]
    [InlineData("{\"x\":", 0, "the header is not valid JSON")]
    public void MalformedHeadersSayWhatIsWrong(string header, int dataBytes, string problem)
    {
        string path = RawFile(header, dataBytes);
        Assert.Contains(problem, Rejected(path, () => SafeTensors.Read(path)).Message);
    }

    [Fact]
    public void InvalidUtf8InTheHeaderIsRejected()
    {
        byte[] header = Encoding.UTF8.GetBytes("{\"x\u00e9\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}");
        header[3] = 0xFF;   // the first byte of é: no UTF-8 sequence starts with 0xFF
        string path = RawFile(header, 4);
        Assert.Contains("the header is not valid UTF-8 (byte 3", Rejected(path, () => SafeTensors.Read(path)).Message);
    }

    [Fact]
    public void ANameFromTheFileIsQuotedShort()
    {
        string name = new('n', 1_000_000);
        string path = RawFile($"{{\"{name}\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}}}", 8);
        var e = Rejected(path, () => SafeTensors.Read(path));
        Assert.Contains("(1000000 characters)", e.Message);
        Assert.True(e.Message.Length < 400, e.Message.Length.ToString());
    }

    [Fact]
    public void OrphanedTemporariesOfADeadWriterAreRemovedByTheNextSave()
    {
        string path = Path.Combine(dir, "model.safetensors");
        using var dead = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        dead.WaitForExit();
        string orphan = $"{path}.{dead.Id}.{Guid.NewGuid():N}.tmp";
        File.WriteAllBytes(orphan, new byte[1000]);          // what kill -9 during a save leaves
        string live = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        File.WriteAllBytes(live, new byte[10]);              // a writer still running: not ours to remove
        string other = Path.Combine(dir, $"other.safetensors.{dead.Id}.{Guid.NewGuid():N}.tmp");
        File.WriteAllBytes(other, new byte[10]);             // another path's leftover: its own next save cleans it

        using (var scope = NewDisposeScope())
            SafeTensors.Write(path, new Dictionary<string, Tensor> { ["x"] = ones(3) });
        Assert.False(File.Exists(orphan));
        Assert.True(File.Exists(live));
        Assert.True(File.Exists(other));
        Assert.True(File.Exists(path));
    }

    [Fact]
    public void ATensorOverTwoGibibytesSavesAndLoads()
    {
        long n = (1L << 31) + 24;   // past int.MaxValue bytes: a span cannot hold it
        string path = Path.Combine(dir, "big.safetensors");
        using (var big = zeros(new[] { n }, dtype: ScalarType.Byte))
        {
            big[0] = 7;
            big[(1L << 31) - 1] = 8;
            big[n - 1] = 9;
            SafeTensors.Write(path, new Dictionary<string, Tensor> { ["big"] = big });
        }
        Assert.Equal(SafeTensors.ReadHeader(path).DataStart + n, new FileInfo(path).Length);
        var (tensors, _) = SafeTensors.Read(path);
        using var back = tensors["big"];
        Assert.Equal(new[] { n }, back.shape);
        Assert.Equal(7, back[0].item<byte>());
        Assert.Equal(8, back[(1L << 31) - 1].item<byte>());
        Assert.Equal(9, back[n - 1].item<byte>());
        Assert.Equal(3L, back.count_nonzero().item<long>());
    }
}
