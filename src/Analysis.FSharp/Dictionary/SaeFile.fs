/// An SAE on disk in SAELens's folder layout: <dir>/sae_weights.safetensors (W_enc [d_in, d_sae], b_enc [d_sae],
/// W_dec [d_sae, d_in], b_dec [d_in], and threshold [d_sae] for JumpReLU and BatchTopK) and <dir>/cfg.json
/// (architecture, d_in, d_sae, k, hook_name, model_name, dtype, apply_b_dec_to_input, normalize_activations).
module MechInterp.Analysis.Dictionary.SaeFile

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp

let weightsFile = "sae_weights.safetensors"
let configFile = "cfg.json"

let private configJson (c: SaeConfig) =
    let o = JsonObject()
    o.["architecture"] <- JsonValue.Create(Architecture.name c.Architecture)
    o.["d_in"] <- JsonValue.Create c.DIn
    o.["d_sae"] <- JsonValue.Create c.DSae
    if c.Architecture = TopK || c.Architecture = BatchTopK then o.["k"] <- JsonValue.Create c.K
    o.["dtype"] <- JsonValue.Create "float32"
    o.["device"] <- JsonValue.Create "cpu"
    // Training scaled the inputs; the scale is folded into the weights, so the saved SAE reads raw activations.
    o.["apply_b_dec_to_input"] <- JsonValue.Create true
    o.["normalize_activations"] <- JsonValue.Create "none"
    o.["hook_name"] <- JsonValue.Create c.HookName
    o.["model_name"] <- JsonValue.Create c.ModelName
    let metadata = JsonObject()
    metadata.["hook_name"] <- JsonValue.Create c.HookName
    metadata.["model_name"] <- JsonValue.Create c.ModelName
    o.["metadata"] <- metadata
    o.ToJsonString(JsonSerializerOptions(WriteIndented = true))

/// Writes the SAE into `dir` (created if needed), each file atomically.
let save (dir: string) (sae: Sae) =
    Directory.CreateDirectory dir |> ignore
    use _scope = torch.NewDisposeScope()
    use _noGrad = torch.no_grad()
    let tensors =
        readOnlyDict
            [ yield "W_enc", sae.W_enc.detach()
              yield "b_enc", sae.b_enc.detach()
              yield "W_dec", sae.W_dec.detach()
              yield "b_dec", sae.b_dec.detach()
              if Architecture.hasThreshold sae.Config.Architecture then yield "threshold", sae.Threshold.detach() ]
    MechInterp.IO.SafeTensors.Write(Path.Combine(dir, weightsFile), tensors)
    MechInterp.IO.AtomicFile.WriteAllText(Path.Combine(dir, configFile), configJson sae.Config)

let private field (path: string) (o: JsonObject) (name: string) =
    match o.[name] with
    | null -> raise (InvalidDataException $"{path}: cfg.json has no \"{name}\"")
    | v -> v

/// Reads an SAE written by `save` (or by SAELens with these architectures), checking every tensor's presence
/// and shape against cfg.json.
let load (dir: string) : Sae =
    let cfgPath = Path.Combine(dir, configFile)
    let weightsPath = Path.Combine(dir, weightsFile)
    for p in [ cfgPath; weightsPath ] do
        if not (File.Exists p) then raise (FileNotFoundException($"no SAE here: {p} is missing", p))
    let o =
        try
            match JsonNode.Parse(File.ReadAllText cfgPath) with
            | :? JsonObject as o -> o
            | _ -> raise (InvalidDataException $"{cfgPath}: cfg.json must be a JSON object")
        with :? JsonException as e -> raise (InvalidDataException($"{cfgPath}: not valid JSON ({e.Message})", e))
    let text name = (field cfgPath o name).GetValue<string>()
    let integer name =
        try (field cfgPath o name).GetValue<int>()
        with :? InvalidOperationException | :? FormatException -> raise (InvalidDataException $"{cfgPath}: \"{name}\" must be an integer, got {o.[name]}")
    let architecture =
        try Architecture.parse (text "architecture") with :? ArgumentException as e -> raise (InvalidDataException($"{cfgPath}: {e.Message}", e))
    let k = if o.ContainsKey "k" then integer "k" else 0
    let model = if o.ContainsKey "model_name" then text "model_name" else ""
    let config = SaeConfig.create architecture (integer "d_in") (integer "d_sae") k (text "hook_name") model
    try SaeConfig.validate config with :? ArgumentException as e -> raise (InvalidDataException($"{cfgPath}: {e.Message}", e))
    let struct (tensors, _) = MechInterp.IO.SafeTensors.Read weightsPath
    try
        let get name =
            match tensors.TryGetValue name with
            | true, t -> t
            | _ -> raise (InvalidDataException $"""{weightsPath}: tensor "{name}" is missing (has: {String.Join(", ", tensors.Keys)})""")
        let threshold = if Architecture.hasThreshold architecture then Some(get "threshold") else None
        try Sae.Create(config, get "W_enc", get "b_enc", get "W_dec", get "b_dec", threshold)
        with :? ArgumentException as e -> raise (InvalidDataException($"{weightsPath}: {e.Message}", e))
    finally
        for t in tensors.Values do t.Dispose()
