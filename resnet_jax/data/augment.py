"""Image preprocessing in TensorFlow ops, one example at a time (mapped in parallel by tf.data).

All randomness is stateless: each function takes a `seed` int64 [2] tensor, which the pipeline
derives from (seed, process, stream position), so a resumed iterator reproduces every crop, flip
and lighting draw exactly and the result does not depend on thread scheduling.

ImageNet crops decode only what they need: the crop windows are drawn from the image's size (read
from the JPEG header) and cut out of the compressed image with `decode_and_crop_jpeg`, which skips
decoding most of the pixels that would be thrown away. The results are uint8 pixels, the bilinear
resize rounded to the nearest grey level; what is cheaper on the accelerator (mirroring, PCA
lighting, normalisation, the 32x32 pad-and-crop) is returned as per-example draws that
`resnet_jax.data.finish` applies inside the jitted step.

Formats. The training and evaluation pipelines use the JPEG-only ops: ImageNet as prepared by
tensorflow-datasets holds only JPEGs (it converts the archive's one PNG and its CMYK JPEGs), and a
`tf.cond` on the format (two per crop) inside a tf.data function cost 2-10% of the per-example
CPU time in three A/B runs (2-core AMD EPYC, 2026-12-01). `image_shape`, `decode_crop` and
`center_eval` take any format that `decode` reads, for images from elsewhere
(`resnet_jax.predict`).
"""

from resnet_jax.data import datasets
from resnet_jax.data._tf import import_tf

tf = import_tf()

# AlexNet "PCA lighting" (Krizhevsky et al. 2012): principal components of ImageNet RGB pixels
# (on a 0-1 scale) as used by fb.resnet.torch, the reference re-implementation of He2015.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
# No anti-aliasing kernel (TF's default, as in the TF and flax ImageNet examples): crops are resized
# by factors between ~0.5 and ~2, where aliasing is mild, and the kernel cost 40% of the CPU.
_ANTIALIAS = False


def split_seed(seed, n):
    """`n` independent stateless seeds [2] drawn from one (an example's, for its several draws)."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def jpeg_shape(image_bytes):
    """[height, width] int32 of a JPEG, read from its header without decoding."""
    return tf.io.extract_jpeg_shape(image_bytes)[:2]


def image_shape(image_bytes):
    """[height, width] int32 of an encoded image of any format (JPEGs: from the header)."""
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: jpeg_shape(image_bytes),
        lambda: tf.shape(decode(image_bytes))[:2],
    )


def decode(image_bytes):
    """Full decode to uint8 [H, W, 3] (JPEG, PNG, BMP or GIF; grey images become RGB)."""
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def decode_jpeg_crop(image_bytes, window):
    """uint8 [h, w, 3] region `window` = [y, x, h, w] of a JPEG; only the window is decoded."""
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)


def decode_crop(image_bytes, window):
    """uint8 [h, w, 3] region `window` of an encoded image of any format.

    JPEGs decode only the window; other formats decode fully, then crop.
    """
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: decode_jpeg_crop(image_bytes, window),
        lambda: tf.image.crop_to_bounding_box(decode(image_bytes), *tf.unstack(window)),
    )


def _resize(image, size):
    """Bilinear resize of [H, W, 3] to `size` [h, w]; float32 output on the 0-255 scale.

    uint8 input is cast to float32 first: TF's bilinear kernel runs about twice as fast on float32
    input as on uint8 (measured on 2-core AMD EPYC on 2026-12-01), and the result is the same.
    """
    image = tf.cast(image, tf.float32)
    return tf.image.resize(image, size, method="bilinear", antialias=_ANTIALIAS)


def to_uint8(image):
    """Float pixels on the 0-255 scale rounded to the nearest uint8 (halves round up).

    A bilinear resize of 0-255 pixels stays within [0, 255] (each output is a convex combination
    of inputs), so no clipping is needed; rounding moves a pixel by at most 0.5 grey levels.
    """
    return tf.cast(image + 0.5, tf.uint8)


def resize_shorter_side(image, shorter):
    """Resizes [H, W, 3] so that min(H, W) == shorter, keeping the aspect ratio."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.round(hw * tf.cast(shorter, tf.float32) / tf.reduce_min(hw)), tf.int32)
    return _resize(image, tf.maximum(new_hw, shorter))


def pca_lighting_offset(seed, std=0.1):
    """AlexNet PCA lighting: one RGB offset [3] (0-255 scale) per image, alpha ~ N(0, std)."""
    alpha = tf.random.stateless_normal([3], seed) * std
    return tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL)) * 255.0


def flip_draw(seed):
    """bool []: mirror the image, with probability 1/2 (applied on the device by `finish`).

    Mirroring after the half-pixel-centred bilinear resize equals mirroring before it (the resize
    is symmetric), so the host never copies pixels to mirror them.
    """
    return tf.random.stateless_uniform([], seed) < 0.5


def resize_to_uint8(crop, image_size):
    """uint8 [image_size, image_size, 3]: a decoded crop resized bilinearly and rounded."""
    return to_uint8(_resize(crop, [image_size, image_size]))


def jpeg_crop_resize(image_bytes, window, image_size):
    """uint8 [image_size, image_size, 3]: region `window` of a JPEG decoded, resized, rounded."""
    return resize_to_uint8(decode_jpeg_crop(image_bytes, window), image_size)


def paper_window(hw, seed, image_size=224, scale_range=(256, 480)):
    """(window [y, x, side, side] int32, flip bool) of He2015 Sec. 3.4 scale augmentation, for an
    image of size `hw` = [height, width] int32.

    Shorter side to S ~ U{scale_range}, random image_size crop, mirror: resizing the whole image
    and then cropping equals cropping a window of side image_size * shorter / S in the original
    and resizing only that window, which lets JPEG decoding skip most of the image.
    """
    s_scale, s_y, s_x, s_flip = split_seed(seed, 4)
    shorter = tf.cast(tf.reduce_min(hw), tf.float32)
    scale = tf.random.stateless_uniform([], s_scale, scale_range[0], scale_range[1] + 1, tf.int32)
    side = tf.cast(tf.round(image_size * shorter / tf.cast(scale, tf.float32)), tf.int32)
    side = tf.clip_by_value(side, 1, tf.reduce_min(hw))
    y = tf.random.stateless_uniform([], s_y, 0, hw[0] - side + 1, tf.int32)
    x = tf.random.stateless_uniform([], s_x, 0, hw[1] - side + 1, tf.int32)
    return tf.stack([y, x, side, side]), flip_draw(s_flip)


def inception_window(hw, seed, area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3)):
    """(window [y, x, h, w] int32, flip bool): Inception-style random-resized crop (area and
    aspect ranges of Szegedy et al.) and mirror of an image of size `hw` = [height, width]."""
    s_box, s_flip = split_seed(seed, 2)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([hw, [3]], 0),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=s_box,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]]), flip_draw(s_flip)


def center_window(hw, image_size=224, resize_size=None):
    """[y, x, side, side] int32: the centre square of an image of size `hw` = [height, width]
    that becomes the centre crop after resizing the shorter side to resize_size (default
    image_size / 0.875, i.e. 256 for 224)."""
    resize_size = resize_size or datasets.center_resize_side(image_size)
    side = tf.cast(
        tf.round(tf.cast(tf.reduce_min(hw), tf.float32) * image_size / resize_size), tf.int32
    )
    side = tf.maximum(side, 1)
    return tf.stack([(hw[0] - side + 1) // 2, (hw[1] - side + 1) // 2, side, side])


def center_eval(image_bytes, image_size=224, resize_size=None, *, jpeg_only=False):
    """Shorter side to resize_size (default image_size / 0.875, i.e. 256 for 224), centre crop.

    Only the central window is decoded and resized. Returns uint8 [image_size, image_size, 3].
    Any format that `decode` reads, or with `jpeg_only` JPEGs alone, without the format `tf.cond`.
    """
    shape, crop = (jpeg_shape, decode_jpeg_crop) if jpeg_only else (image_shape, decode_crop)
    window = center_window(shape(image_bytes), image_size, resize_size)
    return resize_to_uint8(crop(image_bytes, window), image_size)


def _flip_views(views):
    """[V, H, W, 3] -> [2V, H, W, 3]: the views followed by their horizontal mirrors."""
    return tf.concat([views, tf.reverse(views, axis=[2])], 0)


def ten_crop_eval(image_bytes, image_size=224, resize_size=256):
    """He2015 10-crop testing: shorter side to resize_size; 4 corner + centre crops and mirrors.

    Returns uint8 [10, image_size, image_size, 3] ordered (top-left, top-right, bottom-left,
    bottom-right, centre) then the same five flipped.
    """
    image = to_uint8(resize_shorter_side(decode(image_bytes), resize_size))
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ys = [0, 0, h - image_size, h - image_size, (h - image_size) // 2]
    xs = [0, w - image_size, 0, w - image_size, (w - image_size) // 2]
    views = tf.stack(
        [image[y : y + image_size, x : x + image_size] for y, x in zip(ys, xs, strict=True)]
    )
    return _flip_views(views)


def multiscale_eval(image_bytes, scale):
    """One scale of He2015 multi-scale testing: shorter side to `scale`, then the centred
    scale x scale square and its mirror (batches need one shape, so the square stands in for the
    paper's full rectangular image). Returns uint8 [2, scale, scale, 3].
    """
    image = to_uint8(resize_shorter_side(decode(image_bytes), scale))
    view = tf.image.resize_with_crop_or_pad(image, scale, scale)
    return _flip_views(view[None])


def cifar_draws(seed, pad=4):
    """(crop offsets int32 [2] in [0, 2 * pad], flip bool []) of He2015 Sec. 4.2's augmentation.

    Zero-pad `pad` pixels per side after normalisation, random crop of the image's size, random
    mirror; `finish.pad_crop_flip` applies them on the device. The draws are exactly those of
    `tf.image.stateless_random_crop` and `stateless_random_flip_left_right` with these seeds.
    """
    s_crop, s_flip = split_seed(seed, 2)
    # stateless_random_crop: uniform int32 in [0, int32 max) per axis of [H+2p, W+2p, 3], modulo
    # the number of crop positions along it (1 for the channels).
    limit = tf.constant([2 * pad + 1, 2 * pad + 1, 1])
    offsets = tf.random.stateless_uniform([3], s_crop, maxval=tf.int32.max, dtype=tf.int32) % limit
    return offsets[:2], flip_draw(s_flip)
