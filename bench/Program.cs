using System.Text.Json;
using MechInterp;
using MechInterp.Bench;
using MechInterp.Kernels;
using MechInterp.Native;
using MechInterp.Runtime;
using static TorchSharp.torch;

// Times each case against its libtorch baselines in one run and writes artifacts/bench/bench.json.
TorchRuntime.EnsureLoaded();
if (!NativeKernels.IsAvailable)
{
    Console.Error.WriteLine($"bench: the native library is unavailable ({NativeKernels.UnavailableReason}); run `dotnet fsi build.fsx native`.");
    return 1;
}
// Threads for the whole run (MECHINTERP_THREADS, default all cores), pushed to libtorch and our pool alike without
// marking the setting as chosen: the Trainer rows measure the default thread choice.
MechInterp.Runtime.ThreadSettings.Apply(Settings.Threads);
bool warmHeap = MechInterp.Native.Allocator.KeepHeapWarm();
Console.WriteLine($"threads: {Settings.Threads} (libtorch {get_num_threads()}), native back end: {NativeKernels.Simd}, heap kept warm: {warmHeap}");

var results = new List<BenchResult>();
if (args is ["train", "spin", var kind, var arm, var seconds])
{
    TrainingStep.Spin(kind == "moe", Enum.Parse<KernelBackend>(arm, ignoreCase: true), double.Parse(seconds));
    return 0;
}

foreach (var (rows, cols) in Wanted("softmax") ? new[] { (8L * 8 * 256, 256L), (4096L, 1024L) } : [])
{
    using var scope = NewDisposeScope();
    var x = randn(rows, cols);
    var ms = Timing.Interleaved([
        () => { using var _ = Kernel.SoftmaxLastDim(x, KernelBackend.Native); },
        () => { using var _ = x.softmax(-1); },
    ]);
    results.Add(ms.Compare($"softmax rows {rows}x{cols}", 0, "torch.softmax", 1));
}

// `dotnet run -- train` (or attn, moe, softmax, hooks, batched, sae) runs one group only, for quick iteration.
bool Wanted(string group) => args.Length == 0 || args.Contains(group);   // "profile" adds where the training step's time goes
if (Wanted("attn")) results.AddRange(AttentionCases.Run());
if (Wanted("moe")) results.AddRange(MoeCases.Run());
if (Wanted("train")) results.AddRange(TrainingStep.Run(profile: args.Contains("profile")));
if (Wanted("hooks")) results.AddRange(HookedModelCases.Run());
if (Wanted("batched")) results.AddRange(BatchedTrainingCases.Run());
if (Wanted("sae")) results.AddRange(SaeCases.Run());

Console.WriteLine();
// The speedup is the ratio of medians; "rounds p25-p75" is the interquartile range of the per-round ratios.
Console.WriteLine($"{"case",-48} {"ours ms",10} {"baseline",-16} {"base ms",10} {"speedup",8}  {"rounds p25-p75",-14}");
foreach (var r in results)
    Console.WriteLine($"{r.Case,-48} {r.OursMs,10:F3} {r.Baseline,-16} {r.BaselineMs,10:F3} {r.Speedup,8:F2}  " +
                      (r.Rounds is { } spread ? $"{spread.P25:F2}-{spread.P75:F2}" : ""));

string outDir = Path.Combine(FindRoot(), "artifacts", "bench");
Directory.CreateDirectory(outDir);
string json = JsonSerializer.Serialize(results.Select(r =>
{
    var row = new Dictionary<string, object>
    {
        ["case"] = r.Case, ["ours_ms"] = r.OursMs, ["baseline"] = r.Baseline, ["baseline_ms"] = r.BaselineMs, ["speedup"] = r.Speedup,
    };
    if (r.Rounds is { } spread)
    {
        row["speedup_rounds_p25"] = spread.P25;
        row["speedup_rounds_p75"] = spread.P75;
    }
    return row;
}), new JsonSerializerOptions { WriteIndented = true });
// A run of some groups only must not replace the full record.
string path = Path.Combine(outDir, args.Length == 0 ? "bench.json" : "bench.partial.json");
MechInterp.IO.AtomicFile.WriteAllText(path, json);
Console.WriteLine($"wrote {path}");
return 0;

static string FindRoot()
{
    for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        if (File.Exists(Path.Combine(dir.FullName, "MechInterp.sln"))) return dir.FullName;
    return Directory.GetCurrentDirectory();
}
