"""Image preprocessing in TensorFlow ops, one example at a time (mapped in parallel by tf.data).

All randomness is stateless: each function takes a `seed` int64 [2] tensor, which the pipeline
derives from (seed, process, stream position), so a resumed iterator reproduces every crop, flip
and lighting draw exactly and the result does not depend on thread scheduling.

ImageNet functions take the encoded JPEG bytes and decode only what they need: the training crops
and the centre crop are cut out of the compressed image with `decode_and_crop_jpeg`, which skips
decoding most of the pixels that would be thrown away.
"""

from resnet_jax.data._tf import import_tf

tf = import_tf()

# Channel statistics of ImageNet on the 0-255 scale (the values torchvision and flax use).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# AlexNet "PCA lighting" (Krizhevsky et al. 2012): principal components of ImageNet RGB pixels
# (on a 0-1 scale) as used by fb.resnet.torch, the reference re-implementation of He2015.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
# No anti-aliasing kernel (TF's default, as in the TF and flax ImageNet examples): crops are resized
# by factors between ~0.5 and ~2, where aliasing is mild, and the kernel cost 40% of the CPU.
_ANTIALIAS = False


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def image_shape(image_bytes):
    """[height, width] int32 of an encoded image, read from the JPEG header without decoding."""
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.extract_jpeg_shape(image_bytes)[:2],
        lambda: tf.shape(decode(image_bytes))[:2],
    )


def decode(image_bytes):
    """Full decode to uint8 [H, W, 3] (JPEG, PNG, BMP or GIF; grey images become RGB)."""
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def decode_crop(image_bytes, window):
    """uint8 [h, w, 3] region `window` = [y, x, h, w] of an encoded image.

    JPEGs decode only the window; other formats (rare in ImageNet) decode fully, then crop.
    """
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3),
        lambda: tf.image.crop_to_bounding_box(decode(image_bytes), *tf.unstack(window)),
    )


def _resize(image, size):
    """Bilinear resize of [H, W, 3] to `size` [h, w]; float32 output on the 0-255 scale."""
    return tf.image.resize(image, size, method="bilinear", antialias=_ANTIALIAS)


def resize_shorter_side(image, shorter):
    """Resizes [H, W, 3] so that min(H, W) == shorter, keeping the aspect ratio."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.round(hw * tf.cast(shorter, tf.float32) / tf.reduce_min(hw)), tf.int32)
    return _resize(image, tf.maximum(new_hw, shorter))


def normalize_imagenet(image, rgb_offset=None):
    """(x + rgb_offset - mean) / std per channel, for x float [..., H, W, 3] on the 0-255 scale.

    Meant for whole batches: one multiply-add over [b, ...] costs far less CPU than the same ops per
    example. rgb_offset (e.g. PCA lighting, [b, 1, 1, 3]) must broadcast against image.
    """
    inv_std = tf.constant([1.0 / s for s in IMAGENET_STD])
    bias = -tf.constant(IMAGENET_MEAN)
    if rgb_offset is not None:
        bias = rgb_offset + bias
    return image * inv_std + bias * inv_std


def pca_lighting_offset(seed, std=0.1):
    """AlexNet PCA lighting: one RGB offset [3] (0-255 scale) per image, alpha ~ N(0, std)."""
    alpha = tf.random.stateless_normal([3], seed) * std
    return tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL)) * 255.0


def _flip_crop_resize(image_bytes, window, flip_seed, image_size):
    """Decodes `window`, mirrors it with probability 1/2 and resizes it to image_size^2.

    Mirroring the small uint8 crop before resizing equals mirroring the float result (the
    half-pixel-centred bilinear resize is symmetric) and costs a quarter of the memory traffic.
    """
    crop = decode_crop(image_bytes, window)
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    crop = tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
    return _resize(crop, [image_size, image_size])


def paper_train(image_bytes, seed, image_size=224, scale_range=(256, 480)):
    """He2015 Sec. 3.4 scale augmentation: shorter side to S ~ U{scale_range}, random crop, flip.

    Resizing the whole image and then cropping equals cropping a window of side
    image_size * shorter / S in the original and resizing only that window, which lets JPEG decoding
    skip most of the image. The paper's PCA lighting is added to the batch by the pipeline
    (`pca_lighting_offset`, `normalize_imagenet`). Returns float32 [image_size, image_size, 3],
    0-255 scale, not normalised.
    """
    s_scale, s_y, s_x, s_flip = _split(seed, 4)
    hw = image_shape(image_bytes)
    shorter = tf.cast(tf.reduce_min(hw), tf.float32)
    scale = tf.random.stateless_uniform([], s_scale, scale_range[0], scale_range[1] + 1, tf.int32)
    side = tf.cast(tf.round(image_size * shorter / tf.cast(scale, tf.float32)), tf.int32)
    side = tf.clip_by_value(side, 1, tf.reduce_min(hw))
    y = tf.random.stateless_uniform([], s_y, 0, hw[0] - side + 1, tf.int32)
    x = tf.random.stateless_uniform([], s_x, 0, hw[1] - side + 1, tf.int32)
    return _flip_crop_resize(image_bytes, tf.stack([y, x, side, side]), s_flip, image_size)


def inception_train(
    image_bytes, seed, image_size=224, area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3)
):
    """Inception-style random-resized crop (area and aspect ranges of Szegedy et al.) and flip.

    Returns float32 [image_size, image_size, 3], 0-255 scale, not normalised.
    """
    s_box, s_flip = _split(seed, 2)
    hw = image_shape(image_bytes)
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
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    return _flip_crop_resize(image_bytes, window, s_flip, image_size)


def center_eval(image_bytes, image_size=224, resize_size=None):
    """Shorter side to resize_size (default image_size / 0.875, i.e. 256 for 224), centre crop.

    Only the central window is decoded and resized. Returns float32 [image_size, image_size, 3],
    0-255 scale, not normalised.
    """
    resize_size = resize_size or int(round(image_size / 0.875))
    hw = image_shape(image_bytes)
    side = tf.cast(
        tf.round(tf.cast(tf.reduce_min(hw), tf.float32) * image_size / resize_size), tf.int32
    )
    side = tf.maximum(side, 1)
    window = tf.stack([(hw[0] - side + 1) // 2, (hw[1] - side + 1) // 2, side, side])
    return _resize(decode_crop(image_bytes, window), [image_size, image_size])


def _flip_views(views):
    """[V, H, W, 3] -> [2V, H, W, 3]: the views followed by their horizontal mirrors."""
    return tf.concat([views, tf.reverse(views, axis=[2])], 0)


def ten_crop_eval(image_bytes, image_size=224, resize_size=256):
    """He2015 10-crop testing: shorter side to resize_size; 4 corner + centre crops and mirrors.

    Returns float32 [10, image_size, image_size, 3] ordered (top-left, top-right, bottom-left,
    bottom-right, centre) then the same five flipped; 0-255 scale, not normalised.
    """
    image = resize_shorter_side(decode(image_bytes), resize_size)
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
    paper's full rectangular image). Returns float32 [2, scale, scale, 3], 0-255, not normalised.
    """
    image = resize_shorter_side(decode(image_bytes), scale)
    view = tf.image.resize_with_crop_or_pad(image, scale, scale)
    return _flip_views(view[None])


def cifar_train(image, seed, pad=4, image_size=32):
    """He2015 Sec. 4.2: zero-pad `pad` pixels per side, random image_size crop, random flip.

    `image` is the already normalised float32 [32, 32, 3], so the zero padding is the mean colour.
    """
    s_crop, s_flip = _split(seed, 2)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop = tf.image.stateless_random_crop(padded, [image_size, image_size, 3], s_crop)
    return tf.image.stateless_random_flip_left_right(crop, s_flip)
