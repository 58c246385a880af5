// The packages as a library consumer meets them: a fresh console project and a fresh F# script, both outside this
// repository (so its Directory.Build.props and central package versions do not apply), restore MechInterp.Core and
// MechInterp.Analysis from a local feed that holds only the packed .nupkg files (their dependencies, TorchSharp-cpu
// and the rest, from the machine's usual NuGet sources), train a tiny model, save it, load it back and run a cache.
// Usage: dotnet fsi tests/Package/consumer_check.fsx --feed DIR --version V
// Prints "consumer C#: passed|failed" and "consumer F#: passed|failed"; exits 1 if either failed.
open System
open System.Diagnostics
open System.IO

let args = fsi.CommandLineArgs |> Array.skip 1
let valueOf flag =
    match args |> Array.tryFindIndex ((=) flag) with
    | Some i when i + 1 < args.Length -> args.[i + 1]
    | _ -> failwith $"consumer_check.fsx needs {flag}"
let feed = Path.GetFullPath(valueOf "--feed")
let version = valueOf "--version"
let work = Path.Combine(Path.GetTempPath(), $"mechinterp-consumer-{Guid.NewGuid():N}")

/// Runs a command in `dir` with the consumer's environment (no hint of where this repository's build is).
let run (dir: string) (exe: string) (arguments: string list) (timeout: TimeSpan) =
    let info = ProcessStartInfo(exe, arguments, WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true)
    for name in [ "MECHINTERP_NATIVE_LIB"; "MSBuildExtensionsPath"; "MSBUILD_EXE_PATH"; "MSBuildSDKsPath" ] do
        info.Environment.Remove name |> ignore
    info.Environment.["DOTNET_CLI_TELEMETRY_OPTOUT"] <- "1"
    info.Environment.["DOTNET_NOLOGO"] <- "1"
    use p = Process.Start info
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    if not (p.WaitForExit timeout) then
        p.Kill true
        -1, $"{exe} ran past {timeout}"
    else p.ExitCode, out.Result + err.Result

/// The feed beside the machine's own sources: only our packages are in it, and the version is new to every cache.
let nugetConfig =
    $"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="mechinterp-local" value="{feed}" />
  </packageSources>
</configuration>
"""

let csproj =
    $"""<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <!-- Only to spare the disk: libtorch is about 500 MB per output folder. -->
    <CreateHardLinksForCopyLocalIfPossible>true</CreateHardLinksForCopyLocalIfPossible>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="MechInterp.Core" Version="{version}" />
  </ItemGroup>
</Project>
"""

let program =
    """using MechInterp.Data;
using MechInterp.Hooks;
using MechInterp.Model;
using MechInterp.Native;
using MechInterp.Runtime;
using MechInterp.Training;
using TorchSharp;

TorchRuntime.EnsureLoaded();
var task = new InductionTask(vocabSize: 16, maxRepeat: 4, minRepeat: 2);
using var model = new HookedTransformer(new DecoderConfig {
    d_model = 16, n_layers = 2, n_heads = 2, attn_only = true,
    d_vocab = task.VocabSize, n_ctx = task.SequenceLength });
var result = new Trainer(model, task, new TrainingConfig { Steps = 20, Progress = false }).Run();
string path = Path.Combine(AppContext.BaseDirectory, "tiny.safetensors");
model.Save(path);
using var loaded = HookedTransformer.Load(path);
using var batch = task.Sample(2, new Random(0));
var (logits, cache) = loaded.RunWithCache(batch.Tokens, name => name.EndsWith("hook_pattern"));
using (cache)
{
    Console.WriteLine($"pattern {string.Join(",", cache[HookNames.Pattern(1)].shape)}");
}
using var original = model.Forward(batch.Tokens);
Console.WriteLine($"reload max diff {(original - logits).abs().max().item<float>()}");
Console.WriteLine($"libtorch from {TorchRuntime.LoadedFrom}");
Console.WriteLine($"native kernels: {NativeKernels.IsAvailable} from {NativeKernels.LoadedFrom ?? NativeKernels.UnavailableReason}");
"""

let script =
    $$"""#i "nuget: {{feed}}"
#r "nuget: MechInterp.Analysis, {{version}}"
open System
open MechInterp.Data
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Training
open MechInterp.Analysis.Residual

MechInterp.Runtime.TorchRuntime.EnsureLoaded()
let task = InductionTask(16, 4, 2)
let model = new HookedTransformer(DecoderConfig(d_model = 16, n_layers = 2, n_heads = 2, attn_only = true, d_vocab = task.VocabSize, n_ctx = task.SequenceLength))
Trainer(model, task, TrainingConfig(Steps = 20, Progress = false)).Run() |> ignore
let path = IO.Path.Combine(__SOURCE_DIRECTORY__, "tiny.safetensors")
model.Save path
let loaded = HookedTransformer.Load path
let batch = task.Sample(2, Random 0)
let names = Lens.streamNames loaded |> Set.ofList
let struct (logits, cache) = loaded.RunWithCache(batch.Tokens, Func<string, bool>(fun n -> names.Contains n || n.EndsWith "hook_pattern"))
printfn "pattern %s" (String.Join(",", cache.[HookNames.Pattern 1].shape))
printfn "streams %s" (String.Join(",", (Lens.streams loaded cache).shape))
printfn "reload max diff %g" ((model.Forward(batch.Tokens) - logits).abs().max().item<float32>())
printfn "native kernels: %b from %s" MechInterp.Native.NativeKernels.IsAvailable (MechInterp.Native.NativeKernels.LoadedFrom |> Option.ofObj |> Option.defaultValue "nowhere")
"""

/// What a run must print: the cache's shape, an exact reload, and the native library from the package.
let check (name: string) (code: int) (output: string) (expected: string list) =
    let missing = expected |> List.filter (fun e -> not (output.Contains e))
    let nativeLine = output.Split('\n') |> Array.tryFind (fun l -> l.StartsWith "native kernels:") |> Option.defaultValue ""
    let fromPackage = nativeLine.Contains "native kernels: True" || nativeLine.Contains "native kernels: true"
    let underRuntimes = nativeLine.Contains(Path.Combine("runtimes", "linux-x64", "native", "libmechinterp_native.so"))
    let ok = code = 0 && missing.IsEmpty && fromPackage && underRuntimes
    if not ok then
        printfn "---- %s output (exit %d) ----\n%s\n----" name code output
        if not missing.IsEmpty then printfn "%s: missing %A" name missing
        if not (fromPackage && underRuntimes) then printfn "%s: the native library did not load from runtimes/linux-x64/native: %s" name nativeLine
    printfn "consumer %s: %s" name (if ok then "passed" else "failed")
    ok

let csharp () =
    let dir = Path.Combine(work, "csharp")
    Directory.CreateDirectory dir |> ignore
    File.WriteAllText(Path.Combine(dir, "NuGet.Config"), nugetConfig)
    File.WriteAllText(Path.Combine(dir, "Consumer.csproj"), csproj)
    File.WriteAllText(Path.Combine(dir, "Program.cs"), program)
    let code, output = run dir "dotnet" [ "run"; "-c"; "Release" ] (TimeSpan.FromMinutes 8.0)
    check "C#" code output [ "pattern 2,2,9,9"; "reload max diff 0"; "libtorch from" ]

let fsharp () =
    let dir = Path.Combine(work, "fsharp")
    Directory.CreateDirectory dir |> ignore
    File.WriteAllText(Path.Combine(dir, "NuGet.Config"), nugetConfig)
    File.WriteAllText(Path.Combine(dir, "check.fsx"), script)
    let code, output = run dir "dotnet" [ "fsi"; "--quiet"; "check.fsx" ] (TimeSpan.FromMinutes 8.0)
    check "F#" code output [ "pattern 2,2,9,9"; "streams 3,1,2,9,16"; "reload max diff 0" ]

let outside =
    let rec up (d: DirectoryInfo | null) =
        match d with
        | null -> true
        | d when File.Exists(Path.Combine(d.FullName, "Directory.Build.props")) || File.Exists(Path.Combine(d.FullName, "Directory.Packages.props")) -> false
        | d -> up d.Parent
    up (DirectoryInfo(Path.GetTempPath()))
if not outside then failwith $"{Path.GetTempPath()} lies under a Directory.Build.props or Directory.Packages.props: the consumer would not be fresh"
printfn "consumer check in %s against %s (version %s)" work feed version
let results =
    try [ csharp (); fsharp () ]
    finally
        try Directory.Delete(work, true) with _ -> ()
        // The unique version's copies in the NuGet cache: nothing else of it is touched.
        let cache =
            match Environment.GetEnvironmentVariable "NUGET_PACKAGES" with
            | null | "" -> Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".nuget", "packages")
            | v -> v
        for id in [ "mechinterp.core"; "mechinterp.analysis" ] do
            let dir = Path.Combine(cache, id, version.ToLowerInvariant())
            if Directory.Exists dir then Directory.Delete(dir, true)
if results |> List.forall id then exit 0 else exit 1
