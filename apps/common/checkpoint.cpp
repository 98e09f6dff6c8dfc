// Checkpoint glue between Tensors and the buffer-level safetensors reader/writer.
#include "apps/common/checkpoint.h"

#include "compress/mask.h"

#include <cctype>
#include <cstring>
#include <limits>
#include <sstream>

namespace sparrow {

StEntry tensor_to_entry(const Tensor& t) {
  Tensor c = t.device() == Device::CPU ? t : t.to(Device::CPU);
  StEntry e;
  e.dtype = dtype_name(c.dtype());
  e.shape.assign(c.shape().begin(), c.shape().end());
  e.data.resize(c.nbytes());
  if (!e.data.empty()) std::memcpy(e.data.data(), c.raw_data(), c.nbytes());
  return e;
}

Tensor entry_to_tensor(const StEntry& e, const std::string& what) {
  DType dt;
  if (e.dtype == "F32") dt = DType::F32;
  else if (e.dtype == "F64") dt = DType::F64;
  else if (e.dtype == "I32") dt = DType::I32;
  else if (e.dtype == "I64") dt = DType::I64;
  else if (e.dtype == "U8") dt = DType::U8;
  else SPARROW_FAIL(what, ": dtype ", e.dtype, " is not supported by sparrow");
  Tensor t = Tensor::empty(Shape(e.shape.begin(), e.shape.end()), dt);
  SPARROW_CHECK(e.data.size() == t.nbytes(), what, ": ", e.data.size(), " bytes for shape ", t.shape_str());
  if (t.nbytes()) std::memcpy(t.raw_data(), e.data.data(), t.nbytes());
  return t;
}

std::string widths_to_string(const std::vector<int>& w) {
  std::string s;
  for (size_t i = 0; i < w.size(); ++i) s += (i ? "," : "") + std::to_string(w[i]);
  return s;
}

std::vector<int> parse_widths(const std::string& s, const std::string& what) {
  std::vector<int> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      size_t used = 0;
      const int v = std::stoi(item, &used);
      if (used != item.size() || v <= 0) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      SPARROW_FAIL(what, ": bad width '", item, "' in '", s, "' (expected positive integers separated by commas)");
    }
  }
  return out;
}

StFile make_checkpoint(Model& model, const Sgd* opt, const LoopPosition& pos,
                       const std::map<std::string, std::string>& metadata) {
  StFile f;
  f.metadata = metadata;
  const ModelSpec& spec = model.spec();
  f.metadata["format"] = "sparrow-checkpoint-1";
  f.metadata["model"] = spec.name;
  f.metadata["classes"] = std::to_string(spec.classes);
  f.metadata["in_channels"] = std::to_string(spec.in_channels);
  f.metadata["widths"] = widths_to_string(spec.widths);
  f.metadata["classifier"] = spec.classifier;
  f.metadata["epoch"] = std::to_string(pos.epoch);
  f.metadata["batches_done"] = std::to_string(pos.batches_done);
  f.metadata["global_step"] = std::to_string(pos.global_step);
  for (auto& [name, t] : model.state_dict()) f.tensors[name] = tensor_to_entry(t);
  for (auto& [name, m] : model.named_modules())
    if (auto* d = dynamic_cast<Dropout*>(m)) {
      uint64_t s[4];
      d->rng.get_state(s);
      f.tensors["rng." + name] = tensor_to_entry(
          Tensor::from_vector<int64_t>({4}, {int64_t(s[0]), int64_t(s[1]), int64_t(s[2]), int64_t(s[3])}));
    }
  if (opt) {
    f.metadata["lr"] = str(opt->lr());
    const auto names = model.named_parameters();
    auto& bufs = const_cast<Sgd*>(opt)->momentum_buffers();
    for (size_t i = 0; i < opt->params().size(); ++i) {
      std::string name = "param" + std::to_string(i);
      for (auto& [n, p] : names)
        if (p.same(opt->params()[i])) name = n;
      if (bufs[i].defined()) f.tensors["optim.momentum." + name] = tensor_to_entry(bufs[i]);
      const Tensor& mask = opt->mask_of(i);
      if (mask.defined()) f.tensors["optim.mask." + name] = tensor_to_entry(mask);
    }
  }
  return f;
}

void save_checkpoint(const std::string& path, const StFile& file) { write_safetensors(path, file); }

namespace {
const std::string& meta(const StFile& f, const std::string& key, const std::string& path) {
  auto it = f.metadata.find(key);
  SPARROW_CHECK(it != f.metadata.end(), path, ": not a sparrow checkpoint (metadata has no '", key, "')");
  return it->second;
}
// A whole decimal integer in [lo, hi]: "12abc", " 3" and out-of-range values are errors, not 12, 3 or UB.
int64_t meta_int64(const StFile& f, const std::string& key, const std::string& path, int64_t lo, int64_t hi) {
  const std::string& v = meta(f, key, path);
  try {
    size_t used = 0;
    const long long x = std::stoll(v, &used);
    if (used == v.size() && !v.empty() && !std::isspace(static_cast<unsigned char>(v[0])) && x >= lo && x <= hi)
      return x;
  } catch (const std::exception&) {
  }
  SPARROW_FAIL(path, ": metadata '", key, "' = '", v.substr(0, 40), "' is not an integer in [", lo, ", ", hi, "]");
}
int meta_int(const StFile& f, const std::string& key, const std::string& path, int lo, int hi) {
  return int(meta_int64(f, key, path, lo, hi));
}

// A lower bound on the weight bytes of the model a spec describes, from what every registered architecture
// shares: consecutive widths (the input channels first) are joined by a 3x3 convolution, each ResNet block
// or stage also holds a w x w 3x3 convolution, and the classifier reads the last width. Computed in double:
// the widths come from an untrusted file.
double min_weight_bytes(const ModelSpec& s) {
  double n = 0, prev = s.in_channels;
  for (int w : s.widths) {
    n += 9.0 * prev * w;
    prev = w;
  }
  const bool resnet = s.name.rfind("resnet", 0) == 0;
  for (size_t i = s.name == "resnet18" ? 0 : 1; resnet && i < s.widths.size(); ++i)
    n += 9.0 * s.widths[i] * s.widths[i];
  n += s.classifier == "pdd" ? 512.0 * prev + 512.0 * 512.0 + 512.0 * s.classes : double(s.classes) * prev;
  return 4 * n;
}
}  // namespace

ModelSpec checkpoint_model_spec(const StFile& f, const std::string& path) {
  ModelSpec spec;
  spec.name = meta(f, "model", path);
  spec.classes = meta_int(f, "classes", path, 2, 1 << 20);
  spec.in_channels = meta_int(f, "in_channels", path, 1, 1 << 10);
  spec.widths = parse_widths(meta(f, "widths", path), path + " metadata 'widths'");
  SPARROW_CHECK(spec.widths.size() <= 1024, path, ": metadata 'widths' lists ", spec.widths.size(), " widths");
  auto it = f.metadata.find("classifier");
  if (it != f.metadata.end()) spec.classifier = it->second;
  default_widths(spec.name);  // an unknown model name is an error naming it, before any arithmetic
  double have = 0;
  for (const auto& [name, e] : f.tensors) have += double(e.data.size());
  const double need = min_weight_bytes(spec);
  SPARROW_CHECK(need <= have, path, ": metadata describes ", spec.name, " widths [", widths_to_string(spec.widths),
                "] (", spec.classes, " classes), which needs at least ", need, " bytes of weights, but the file holds ",
                have, " (corrupt or forged metadata)");
  return spec;
}

std::string spec_differences(const ModelSpec& ck, const ModelSpec& run) {
  std::string d;
  auto add = [&](const std::string& field, const std::string& a, const std::string& b) {
    d += str(d.empty() ? "" : "; ", field, ": ", a, " vs ", b);
  };
  if (ck.name != run.name) add("model", ck.name, run.name);
  const std::vector<int> run_widths =
      run.widths.empty() && ck.name == run.name ? default_widths(run.name) : run.widths;
  if (!run_widths.empty() && ck.widths != run_widths)
    add("widths", "[" + widths_to_string(ck.widths) + "]", "[" + widths_to_string(run_widths) + "]");
  if (ck.classes != run.classes) add("classes", std::to_string(ck.classes), std::to_string(run.classes));
  if (ck.in_channels != run.in_channels)
    add("input channels", std::to_string(ck.in_channels), std::to_string(run.in_channels));
  if (ck.classifier != run.classifier)
    add("classifier", ck.classifier.empty() ? "default" : ck.classifier,
        run.classifier.empty() ? "default" : run.classifier);
  return d;
}

ModelPtr load_model_from_checkpoint(const std::string& path, StFile* file_out) {
  StFile f = read_safetensors(path);
  ModelPtr m = make_model(checkpoint_model_spec(f, path), 0);
  restore_checkpoint(f, path, *m, nullptr, nullptr);
  if (file_out) *file_out = std::move(f);
  return m;
}

void restore_checkpoint(const StFile& f, const std::string& path, Model& model, Sgd* opt, LoopPosition* pos) {
  const ModelSpec want = checkpoint_model_spec(f, path);
  const std::string diff = spec_differences(want, model.spec());
  SPARROW_CHECK(diff.empty(), path, ": checkpoint does not match the model (checkpoint vs run) - ", diff);
  // Fixed-pattern sparse layers are stored as a dense "weight" plus "weight_mask": switch those layers to
  // the sparse representation first, so the state dict's entries line up.
  StateDict masks;
  for (auto& [name, e] : f.tensors)
    if (name.size() > 12 && name.compare(name.size() - 12, 12, ".weight_mask") == 0)
      masks[name] = entry_to_tensor(e, path + " '" + name + "'");
  if (!masks.empty()) {
    const size_t before = model.parameters().size();
    std::vector<Tensor> old = model.parameters();
    make_sparse_like(model, masks);
    std::vector<Tensor> now = model.parameters();
    bool changed = now.size() != before;
    for (size_t i = 0; !changed && i < now.size(); ++i) changed = !now[i].same(old[i]);
    SPARROW_CHECK(!changed || opt == nullptr, path, ": checkpoint has sparse layers; make the model sparse "
                  "(make_sparse_like) before creating its optimizer");
  }
  StateDict sd;
  for (auto& [name, t] : model.state_dict()) {
    auto it = f.tensors.find(name);
    SPARROW_CHECK(it != f.tensors.end(), path, ": checkpoint lacks '", name, "'");
    sd[name] = entry_to_tensor(it->second, path + " '" + name + "'");
  }
  try {
    model.load_state_dict(sd);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  for (auto& [name, m] : model.named_modules())
    if (auto* d = dynamic_cast<Dropout*>(m)) {
      auto it = f.tensors.find("rng." + name);
      if (it == f.tensors.end()) continue;
      auto v = entry_to_tensor(it->second, path).to_vector<int64_t>();
      SPARROW_CHECK(v.size() == 4, path, ": bad rng state for ", name);
      uint64_t s[4] = {uint64_t(v[0]), uint64_t(v[1]), uint64_t(v[2]), uint64_t(v[3])};
      d->rng.set_state(s);
    }
  if (opt) {
    const auto names = model.named_parameters();
    for (size_t i = 0; i < opt->params().size(); ++i) {
      std::string name = "param" + std::to_string(i);  // parameters outside the model (e.g. PDD gates)
      for (auto& [n, p] : names)
        if (p.same(opt->params()[i])) name = n;
      auto mit = f.tensors.find("optim.mask." + name);
      if (mit != f.tensors.end()) opt->set_mask(opt->params()[i], entry_to_tensor(mit->second, path).to(opt->params()[i].device()));
      auto it = f.tensors.find("optim.momentum." + name);
      if (it != f.tensors.end()) {
        Tensor b = entry_to_tensor(it->second, path);
        SPARROW_CHECK(b.shape() == opt->params()[i].shape(), path, ": momentum for '", name, "' has shape ",
                      b.shape_str());
        opt->momentum_buffers()[i] = b.to(opt->params()[i].device());
      }
    }
  }
  if (pos) {
    pos->epoch = meta_int(f, "epoch", path, 0, std::numeric_limits<int>::max());
    pos->batches_done = meta_int64(f, "batches_done", path, 0, std::numeric_limits<int64_t>::max());
    pos->global_step = meta_int64(f, "global_step", path, 0, std::numeric_limits<int64_t>::max());
  }
}

}  // namespace sparrow
