from .encoders import (
    PromptedImageEncoder,
    PromptedTextEncoder,
    attention_probs,
    check_prompted_clip,
    replace_text_prompts,
    replace_vision_prompts,
)
from .load import (OFFICIAL_NAMES, get_tokenizer, load_backbone, load_clip, read_state_dict, resolve_architecture,
                   resolve_pretrained)
